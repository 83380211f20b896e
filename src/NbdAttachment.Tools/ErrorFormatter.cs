using System.Text;

namespace NbdAttachment.Tools;

/// <summary>Turns an exception into one clear line (the typed error's message and its NBD error name) and an exit code.</summary>
internal static class ErrorFormatter
{
    /// <summary>Writes the error to <paramref name="error"/> and returns the exit code for it.</summary>
    public static int Report(Exception exception, TextWriter error, bool verbose, CancellationToken cancellationToken)
    {
        if (exception is OperationCanceledException && cancellationToken.IsCancellationRequested)
        {
            error.WriteLine("nbd: cancelled");
            return ExitCodes.Cancelled;
        }

        var code = exception is ToolUsageException ? ExitCodes.Usage : ExitCodes.Error;
        error.WriteLine($"nbd: {(code == ExitCodes.Usage ? "usage error" : "error")}: {Describe(exception)}");
        if (code == ExitCodes.Usage)
        {
            error.WriteLine("Try 'nbd --help'.");
        }

        if (verbose)
        {
            error.WriteLine(exception.ToString());
        }

        return code;
    }

    /// <summary>The message, the NBD error name in brackets where there is one, and the causes.</summary>
    public static string Describe(Exception exception)
    {
        var text = new StringBuilder(exception.Message.TrimEnd('.'));
        var name = ErrorName(exception);
        if (name is not null)
        {
            text.Append(" [").Append(name).Append(']');
        }

        for (var inner = exception.InnerException; inner is not null; inner = inner.InnerException)
        {
            if (!exception.Message.Contains(inner.Message, StringComparison.Ordinal))
            {
                text.Append(": ").Append(inner.Message.TrimEnd('.'));
            }
        }

        return text.ToString();
    }

    /// <summary>The NBD error name of a typed error: <c>NBD_EIO</c> for a server's I/O error, <c>UnknownExport</c> for a refused export.</summary>
    public static string? ErrorName(Exception exception) => exception switch
    {
        NbdServerException server => $"{WireName(server.Error)} ({server.Error})",
        NbdNegotiationException negotiation => negotiation.Error.ToString(),
        NbdException nbd => nbd.GetType().Name,
        ToolUsageException or ToolException => null,
        OperationCanceledException => null,
        IOException or UnauthorizedAccessException => exception.GetType().Name,
        _ => exception.GetType().Name,
    };

    private static string WireName(NbdError error) => error switch
    {
        NbdError.None => "NBD_SUCCESS",
        NbdError.PermissionDenied => "NBD_EPERM",
        NbdError.IOError => "NBD_EIO",
        NbdError.OutOfMemory => "NBD_ENOMEM",
        NbdError.InvalidArgument => "NBD_EINVAL",
        NbdError.NoSpace => "NBD_ENOSPC",
        NbdError.Overflow => "NBD_EOVERFLOW",
        NbdError.NotSupported => "NBD_ENOTSUP",
        NbdError.Shutdown => "NBD_ESHUTDOWN",
        _ => $"NBD error {(int)error}",
    };
}
