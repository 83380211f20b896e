namespace NbdAttachment;

/// <summary>How guest flush and force-unit-access requests reach the backing storage. Raw values match Apple's.</summary>
public enum DiskSynchronizationMode
{
    /// <summary>Guest flushes are forwarded (NBD <c>FLUSH</c>) and FUA writes keep FUA: data is durable when acknowledged.</summary>
    Full = 0,

    /// <summary>Guest flushes complete locally and FUA is never sent: faster, but no integrity guarantee if the host or server crashes.</summary>
    None = 1,
}
