namespace NbdAttachment.Tools;

/// <summary>A runtime error found by the tool itself (a read-only or too small destination, an unagreed meta context); exit code 1.</summary>
internal sealed class ToolException : Exception
{
    public ToolException(string message)
        : base(message)
    {
    }
}
