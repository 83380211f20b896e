namespace NbdAttachment.Diagnostics;

/// <summary>
/// The public catalogue of log event ids of the vhost-user-blk backend (range 5100-5199).
/// Ids are a contract: they are never reused.
/// </summary>
public static class VhostUserEventIds
{
    /// <summary>The backend listens on its socket.</summary>
    public const int Listening = 5101;

    /// <summary>A front-end (VMM) connected.</summary>
    public const int FrontEndConnected = 5102;

    /// <summary>A front-end session ended (clean close, or with the error).</summary>
    public const int FrontEndDisconnected = 5103;

    /// <summary>A front-end broke the protocol or the session failed; the front-end is disconnected.</summary>
    public const int SessionFailed = 5104;

    /// <summary>A second front-end connected while one is served; it was refused.</summary>
    public const int FrontEndRefused = 5105;

    /// <summary>A message from the front-end (trace).</summary>
    public const int Message = 5110;

    /// <summary>Guest memory was mapped (SET_MEM_TABLE).</summary>
    public const int MemoryMapped = 5111;

    /// <summary>A virtqueue started.</summary>
    public const int QueueStarted = 5112;

    /// <summary>A virtqueue stopped (GET_VRING_BASE).</summary>
    public const int QueueStopped = 5113;

    /// <summary>A stopping virtqueue gave up waiting for requests in flight.</summary>
    public const int DrainTimedOut = 5114;

    /// <summary>A guest request failed in the device; the guest got an I/O error status.</summary>
    public const int RequestFailed = 5120;

    /// <summary>The backend stopped.</summary>
    public const int Stopped = 5130;

    /// <summary>An event handler of the backend threw; the exception was swallowed.</summary>
    public const int HandlerFailed = 5131;
}
