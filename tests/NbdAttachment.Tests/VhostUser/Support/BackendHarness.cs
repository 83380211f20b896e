using System.Threading.Channels;
using NbdAttachment.VhostUser;

namespace NbdAttachment.Tests.VhostUser.Support;

/// <summary>
/// Our <see cref="VhostUserBlockBackend"/> serving a <see cref="MemoryBlockDevice"/> on a fresh socket, with its
/// events turned into awaitable queues (nothing here waits on a timer; every wait is bounded).
/// </summary>
public sealed class BackendHarness : IAsyncDisposable
{
    public static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    private readonly string _directory;
    private readonly Channel<VhostUserSessionEndedEventArgs> _ended = Channel.CreateUnbounded<VhostUserSessionEndedEventArgs>();
    private readonly Channel<bool> _connected = Channel.CreateUnbounded<bool>();

    private BackendHarness(MemoryBlockDevice device, VhostUserBlockBackendOptions? options)
    {
        _directory = Path.Combine("/tmp", "vu-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(_directory);
        SocketPath = Path.Combine(_directory, "be.sock");
        Device = device;
        Backend = new VhostUserBlockBackend(SocketPath, device, options);
        Backend.FrontEndConnected += (_, _) => _connected.Writer.TryWrite(true);
        Backend.FrontEndDisconnected += (_, e) => _ended.Writer.TryWrite(e);
    }

    public string SocketPath { get; }

    public MemoryBlockDevice Device { get; }

    public VhostUserBlockBackend Backend { get; }

    /// <summary>Sessions that ended so far and were not consumed by <see cref="NextDisconnectAsync"/>.</summary>
    public int PendingDisconnects => _ended.Reader.Count;

    public static BackendHarness Start(MemoryBlockDevice? device = null, VhostUserBlockBackendOptions? options = null)
    {
        var harness = new BackendHarness(device ?? new MemoryBlockDevice(16L << 20), options);
        try
        {
            harness.Backend.Start();
        }
        catch
        {
            Directory.Delete(harness._directory, recursive: true);
            throw;
        }

        return harness;
    }

    /// <summary>Connects a front-end and waits for the back-end's FrontEndConnected.</summary>
    public async Task<TestFrontEnd> ConnectAsync(FrontEndOptions? options = null)
    {
        var fe = await TestFrontEnd.ConnectAsync(SocketPath, options);
        using var cts = new CancellationTokenSource(Bound);
        try
        {
            await _connected.Reader.ReadAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            await fe.DisposeAsync();
            throw new TimeoutException($"FrontEndConnected was not raised within {Bound}.");
        }

        return fe;
    }

    public async Task<TestFrontEnd> ConnectNegotiatedAsync(FrontEndOptions? options = null)
    {
        var fe = await ConnectAsync(options);
        await fe.NegotiateAsync();
        return fe;
    }

    /// <summary>The next FrontEndDisconnected (bounded); cancelling does not consume an event.</summary>
    public async Task<VhostUserSessionEndedEventArgs> NextDisconnectAsync(CancellationToken cancellationToken = default)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(Bound);
        try
        {
            return await _ended.Reader.ReadAsync(cts.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"FrontEndDisconnected was not raised within {Bound}.");
        }
    }

    /// <summary>Waits for the session to end with a <see cref="VhostUserProtocolException"/> and for the socket to close.</summary>
    public async Task<VhostUserProtocolException> ExpectProtocolErrorAsync(TestFrontEnd fe)
    {
        var ended = await NextDisconnectAsync();
        ended.Error.Should().BeOfType<VhostUserProtocolException>("a front-end that breaks the protocol is disconnected with a protocol error");
        (await fe.WaitForClosedAsync()).Should().BeTrue("the back-end closes the connection of a front-end it rejected");
        return (VhostUserProtocolException)ended.Error!;
    }

    /// <summary>Proves the back-end still works: a new front-end negotiates, writes and reads back, then leaves cleanly.</summary>
    public async Task AssertServesNewFrontEndAsync(FrontEndOptions? options = null)
    {
        var data = new byte[4096];
        Random.Shared.NextBytes(data);
        await using (var fe = await ConnectNegotiatedAsync(options))
        {
            (await fe.SubmitAsync(BlkRequest.Write(8, data))).Status.Should().Be(VirtioBlk.StatusOk);
            var read = await fe.SubmitAsync(BlkRequest.Read(8, data.Length));
            read.Status.Should().Be(VirtioBlk.StatusOk);
            read.Data.Should().Equal(data);
        }

        var ended = await NextDisconnectAsync();
        ended.Error.Should().BeNull("the front-end closed the socket cleanly");
    }

    public async ValueTask DisposeAsync()
    {
        Device.ReleaseAll();
        try
        {
            using var cts = new CancellationTokenSource(Bound);
            await Backend.StopAsync(cts.Token).WaitAsync(Bound);
        }
        catch (NotImplementedException)
        {
            // The back-end is not written yet.
        }

        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
