namespace NbdAttachment.Tools;

/// <summary>The exit codes of the <c>nbd</c> tool (documented in docs/tools.md).</summary>
public static class ExitCodes
{
    /// <summary>The command did what it was asked.</summary>
    public const int Success = 0;

    /// <summary>A runtime error: the NBD server refused or failed a request, the connection failed, a file could not be read or written.</summary>
    public const int Error = 1;

    /// <summary>A usage error: an unknown command or option, a missing or malformed argument, an invalid NBD URL.</summary>
    public const int Usage = 2;

    /// <summary>Cancelled (Ctrl+C), as a shell reports a process ended by SIGINT (128 + 2).</summary>
    public const int Cancelled = 130;
}
