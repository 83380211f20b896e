namespace NbdAttachment.Client;

/// <summary>Flags for write-type commands.</summary>
[Flags]
public enum NbdCommandOptions
{
    /// <summary>No flags.</summary>
    None = 0,

    /// <summary>FUA: the reply waits until the data is on stable storage (needs <see cref="NbdExportInfo.CanFua"/>).</summary>
    ForceUnitAccess = 1,

    /// <summary>WRITE_ZEROES only: the range must end up allocated (no hole punched).</summary>
    NoHole = 2,

    /// <summary>WRITE_ZEROES only: fail with <see cref="NbdError.NotSupported"/> unless zeroing is fast (needs <see cref="NbdExportInfo.CanFastZero"/>).</summary>
    FastZero = 4,

    /// <summary>READ only: DF, the server answers with one data chunk, no holes (needs <see cref="NbdExportInfo.CanDontFragment"/>).</summary>
    DontFragment = 8,
}

/// <summary>The life-cycle state of an <see cref="NbdClient"/>.</summary>
public enum NbdClientState
{
    /// <summary>Connecting and negotiating for the first time.</summary>
    Connecting,

    /// <summary>Connected; I/O flows.</summary>
    Connected,

    /// <summary>The connection was lost; I/O waits while the client reconnects.</summary>
    Reconnecting,

    /// <summary>A fatal error or an exhausted reconnect policy; I/O fails with <see cref="NbdClient.Failure"/>.</summary>
    Failed,

    /// <summary>Closed by its owner.</summary>
    Closed,
}
