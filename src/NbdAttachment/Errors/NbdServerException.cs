namespace NbdAttachment;

/// <summary>The server failed a command and returned an NBD error number.</summary>
public sealed class NbdServerException : NbdException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="command">The command that failed, for example <c>READ</c>.</param>
    /// <param name="error">The error the server returned.</param>
    /// <param name="serverMessage">The message the server attached to a structured error, if any.</param>
    public NbdServerException(string command, NbdError error, string? serverMessage = null)
        : base(Describe(command, error, serverMessage))
    {
        Command = command;
        Error = error;
        ServerMessage = serverMessage;
    }

    /// <summary>The command that failed, for example <c>READ</c> or <c>WRITE</c>.</summary>
    public string Command { get; }

    /// <summary>The error the server returned.</summary>
    public NbdError Error { get; }

    /// <summary>The message the server attached to a structured error reply, if any.</summary>
    public string? ServerMessage { get; }

    private static string Describe(string command, NbdError error, string? serverMessage) =>
        string.IsNullOrEmpty(serverMessage)
            ? $"The NBD server failed {command} with {error} ({(int)error})."
            : $"The NBD server failed {command} with {error} ({(int)error}): {serverMessage}";
}
