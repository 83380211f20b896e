using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using NbdAttachment.Client;
using NbdAttachment.Extensions.DependencyInjection;
using NbdAttachment.Testing;

namespace NbdAttachment.PackageTests;

public sealed class DependencyInjectionTests
{
    [Fact]
    public async Task Named_client_connects_lazily_is_shared_and_does_io()
    {
        await using var server = await NbdTestServer.StartAsync();
        var services = new ServiceCollection();
        services.AddNbdClient("disk", server.Uri, options => options with { MaxInFlightRequests = 8 });

        await using var provider = services.BuildServiceProvider();
        var factory = provider.GetRequiredService<INbdClientFactory>();
        server.ActiveConnections.Should().Be(0, "nothing connects before the first GetClientAsync");

        var client = await factory.GetClientAsync("disk");
        var again = await factory.GetClientAsync("disk");
        again.Should().BeSameAs(client);
        server.ActiveConnections.Should().Be(1);

        var data = new byte[64 * 1024];
        Random.Shared.NextBytes(data);
        await client.WriteAsync(8192, data);
        var back = new byte[data.Length];
        await client.ReadAsync(8192, back);
        back.Should().Equal(data);
    }

    [Fact]
    public async Task Concurrent_first_calls_share_one_connection()
    {
        await using var server = await NbdTestServer.StartAsync();
        var services = new ServiceCollection().AddNbdClient("disk", server.Uri);
        await using var provider = services.BuildServiceProvider();
        var factory = provider.GetRequiredService<INbdClientFactory>();

        var clients = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => factory.GetClientAsync("disk").AsTask()));

        clients.Distinct().Should().ContainSingle();
        server.ActiveConnections.Should().Be(1);
    }

    [Fact]
    public async Task Clients_are_disposed_with_the_service_provider()
    {
        await using var server = await NbdTestServer.StartAsync();
        var services = new ServiceCollection()
            .AddNbdClient("a", server.Uri)
            .AddNbdClient("b", registration => registration.Uri = server.Uri);
        var provider = services.BuildServiceProvider();
        var factory = provider.GetRequiredService<INbdClientFactory>();
        var a = await factory.GetClientAsync("a");
        var b = await factory.GetClientAsync("b");
        a.Should().NotBeSameAs(b);
        server.ActiveConnections.Should().Be(2);

        await provider.DisposeAsync();

        await WaitUntilAsync(() => server.ActiveConnections == 0);
        await FluentActions.Awaiting(() => a.ReadAsync(0, new byte[512]).AsTask()).Should().ThrowAsync<ObjectDisposedException>();
        await FluentActions.Awaiting(() => factory.GetClientAsync("a").AsTask()).Should().ThrowAsync<ObjectDisposedException>();
    }

    [Fact]
    public async Task Synchronous_dispose_of_the_provider_disposes_clients()
    {
        await using var server = await NbdTestServer.StartAsync();
        var provider = new ServiceCollection().AddNbdClient("disk", server.Uri).BuildServiceProvider();
        await provider.GetRequiredService<INbdClientFactory>().GetClientAsync("disk");

        provider.Dispose();

        await WaitUntilAsync(() => server.ActiveConnections == 0);
    }

    [Fact]
    public async Task Unknown_name_throws_invalid_operation()
    {
        await using var provider = new ServiceCollection().AddNbdClientFactory().BuildServiceProvider();
        var factory = provider.GetRequiredService<INbdClientFactory>();

        await FluentActions.Awaiting(() => factory.GetClientAsync("missing").AsTask())
            .Should().ThrowAsync<InvalidOperationException>().WithMessage("*'missing'*");
    }

    [Fact]
    public async Task Failed_connection_is_not_cached()
    {
        // A listener that accepts and hangs up at once: every handshake fails, and each attempt is counted.
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var accepted = 0;
        using var stop = new CancellationTokenSource();
        var acceptLoop = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    using var socket = await listener.AcceptSocketAsync(stop.Token);
                    Interlocked.Increment(ref accepted);
                }
            }
            catch (OperationCanceledException)
            {
            }
        });
        var uri = new Uri($"nbd://127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}/");
        await using var provider = new ServiceCollection()
            .AddNbdClient("disk", uri, options => options with { ConnectTimeout = TimeSpan.FromSeconds(5) })
            .BuildServiceProvider();
        var factory = provider.GetRequiredService<INbdClientFactory>();

        await FluentActions.Awaiting(() => factory.GetClientAsync("disk").AsTask()).Should().ThrowAsync<NbdException>();
        var afterFirst = Volatile.Read(ref accepted);
        afterFirst.Should().BeGreaterThan(0);

        await FluentActions.Awaiting(() => factory.GetClientAsync("disk").AsTask()).Should().ThrowAsync<NbdException>();
        Volatile.Read(ref accepted).Should().BeGreaterThan(afterFirst, "a failed connection is retried, not cached");

        await stop.CancelAsync();
        await acceptLoop;
    }

    [Fact]
    public async Task Logger_factory_from_the_container_is_used()
    {
        await using var server = await NbdTestServer.StartAsync();
        var provider = new CountingLoggerProvider();
        var services = new ServiceCollection()
            .AddLogging(logging => logging.AddProvider(provider).SetMinimumLevel(LogLevel.Trace))
            .AddNbdClient("disk", server.Uri);
        await using var container = services.BuildServiceProvider();

        var client = await container.GetRequiredService<INbdClientFactory>().GetClientAsync("disk");
        await client.FlushAsync();

        provider.Loggers.Should().NotBeEmpty();
        provider.Loggers.Should().Contain(name => name.StartsWith("NbdAttachment", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Caller_cancellation_does_not_cancel_the_shared_connect()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var provider = new ServiceCollection().AddNbdClient("disk", server.Uri).BuildServiceProvider();
        var factory = provider.GetRequiredService<INbdClientFactory>();

        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        await FluentActions.Awaiting(() => factory.GetClientAsync("disk", cancelled.Token).AsTask())
            .Should().ThrowAsync<OperationCanceledException>();

        var client = await factory.GetClientAsync("disk");
        await client.FlushAsync();
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            DateTime.UtcNow.Should().BeBefore(deadline, "the condition should hold within 10 seconds");
            await Task.Delay(20);
        }
    }

    private sealed class CountingLoggerProvider : ILoggerProvider
    {
        private readonly List<string> _loggers = [];

        public IReadOnlyList<string> Loggers
        {
            get
            {
                lock (_loggers)
                {
                    return [.. _loggers];
                }
            }
        }

        public ILogger CreateLogger(string categoryName)
        {
            lock (_loggers)
            {
                _loggers.Add(categoryName);
            }

            return Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        }

        public void Dispose()
        {
        }
    }
}
