using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using NbdAttachment.Client;

namespace NbdAttachment.Extensions.DependencyInjection;

/// <summary>Connects named clients lazily, shares them, and disposes them with the service provider.</summary>
internal sealed class NbdClientFactory : INbdClientFactory, IAsyncDisposable, IDisposable
{
    private readonly IOptionsMonitor<NbdClientRegistrationOptions> _registrations;
    private readonly ILoggerFactory? _loggerFactory;
    private readonly Dictionary<string, Task<NbdClient>> _clients = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _disposing = new();
    private bool _disposed;

    public NbdClientFactory(IOptionsMonitor<NbdClientRegistrationOptions> registrations, ILoggerFactory? loggerFactory)
    {
        _registrations = registrations;
        _loggerFactory = loggerFactory;
    }

    public ValueTask<NbdClient> GetClientAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        Task<NbdClient>? connecting;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_clients.TryGetValue(name, out connecting) || connecting.IsFaulted || connecting.IsCanceled)
            {
                var (uri, options) = Resolve(name);
                var disposing = _disposing.Token;
                connecting = Task.Run(async () => await NbdClient.ConnectAsync(uri, options, disposing).ConfigureAwait(false), CancellationToken.None);
                _clients[name] = connecting;
            }
        }

        return connecting.IsCompletedSuccessfully
            ? new ValueTask<NbdClient>(connecting.Result)
            : new ValueTask<NbdClient>(connecting.WaitAsync(cancellationToken));
    }

    private (Uri Uri, NbdClientOptions Options) Resolve(string name)
    {
        var registration = _registrations.Get(name);
        if (registration.Uri is null)
        {
            throw new InvalidOperationException($"No NBD client is registered under the name '{name}' (AddNbdClient sets its URL).");
        }

        var options = registration.ClientOptions ?? NbdClientOptions.Default;
        if (registration.UseLoggerFactoryFromServices && _loggerFactory is not null
            && ReferenceEquals(options.LoggerFactory, NullLoggerFactory.Instance))
        {
            options = options with { LoggerFactory = _loggerFactory };
        }

        options.Validate();
        return (registration.Uri, options);
    }

    public async ValueTask DisposeAsync()
    {
        Task<NbdClient>[] clients;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            clients = [.. _clients.Values];
            _clients.Clear();
        }

        await _disposing.CancelAsync().ConfigureAwait(false);
        foreach (var connecting in clients)
        {
            NbdClient client;
            try
            {
                client = await connecting.ConfigureAwait(false);
            }
#pragma warning disable CA1031 // A connection that failed or was cancelled has nothing to dispose.
            catch (Exception)
#pragma warning restore CA1031
            {
                continue;
            }

            await client.DisposeAsync().ConfigureAwait(false);
        }

        _disposing.Dispose();
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();
}
