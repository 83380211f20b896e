using NbdAttachment.Client;

namespace NbdAttachment.Extensions.DependencyInjection;

/// <summary>
/// Hands out the <see cref="NbdClient"/> registered under a name with
/// <see cref="NbdServiceCollectionExtensions.AddNbdClient(Microsoft.Extensions.DependencyInjection.IServiceCollection, string, Uri)"/>.
/// The first call for a name connects; later calls share that client. Clients are owned by the factory and are
/// disposed when the service provider is; callers must not dispose them.
/// </summary>
public interface INbdClientFactory
{
    /// <summary>
    /// Returns the connected client registered as <paramref name="name"/>, connecting it on first use. A failed
    /// connection is not cached: the next call tries again.
    /// </summary>
    /// <param name="name">The registration name (ordinal, case-sensitive).</param>
    /// <param name="cancellationToken">
    /// Stops this caller's wait. The connection attempt itself is shared by concurrent callers and is bounded by
    /// <see cref="NbdClientOptions.ConnectTimeout"/>.
    /// </param>
    /// <exception cref="InvalidOperationException">No client is registered under <paramref name="name"/>.</exception>
    /// <exception cref="ObjectDisposedException">The factory (the service provider) has been disposed.</exception>
    /// <exception cref="NbdException">Connecting failed.</exception>
    ValueTask<NbdClient> GetClientAsync(string name, CancellationToken cancellationToken = default);
}
