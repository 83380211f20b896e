namespace NbdAttachment;

/// <summary>An NBD URL is not valid; <see cref="Exception.Message"/> says exactly what is wrong.</summary>
public sealed class NbdUriFormatException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="uriText">The URL as given.</param>
    /// <param name="reason">What is wrong with it, as a sentence.</param>
    public NbdUriFormatException(string? uriText, string reason)
        : base($"Invalid NBD URL '{uriText}': {reason}")
    {
        UriText = uriText;
        Reason = reason;
    }

    /// <summary>The URL as given.</summary>
    public string? UriText { get; }

    /// <summary>What is wrong with the URL, without the URL itself.</summary>
    public string Reason { get; }
}
