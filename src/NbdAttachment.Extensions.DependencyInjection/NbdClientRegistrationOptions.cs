using NbdAttachment.Client;

namespace NbdAttachment.Extensions.DependencyInjection;

/// <summary>
/// The named options (<c>IOptionsMonitor&lt;NbdClientRegistrationOptions&gt;.Get(name)</c>) that describe one client
/// handed out by <see cref="INbdClientFactory"/>.
/// </summary>
public sealed class NbdClientRegistrationOptions
{
    /// <summary>The NBD URL to connect to (<c>nbd://</c>, <c>nbds://</c>, <c>nbd+unix://</c>, <c>nbds+unix://</c>). Required.</summary>
    public Uri? Uri { get; set; }

    /// <summary>The client settings. Default: <see cref="NbdClientOptions.Default"/>; change it with <c>with</c>.</summary>
    public NbdClientOptions ClientOptions { get; set; } = NbdClientOptions.Default;

    /// <summary>
    /// When <see langword="true"/> (the default) and <see cref="NbdClientOptions.LoggerFactory"/> is left at its
    /// default, the <c>ILoggerFactory</c> registered in the service provider (if any) is used.
    /// </summary>
    public bool UseLoggerFactoryFromServices { get; set; } = true;
}
