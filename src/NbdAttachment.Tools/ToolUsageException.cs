namespace NbdAttachment.Tools;

/// <summary>A usage error found after parsing (an invalid NBD URL, an impossible combination); exit code 2.</summary>
internal sealed class ToolUsageException : Exception
{
    public ToolUsageException(string message)
        : base(message)
    {
    }
}
