using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NbdAttachment.Tests.Support;

/// <summary>
/// A loopback TCP server that runs a script per accepted connection, for tests of hostile or broken servers.
/// It has its own tiny codec (independent of the client's) and never runs longer than the test's timeout.
/// </summary>
public sealed class ScriptedServer : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly Func<RawConnection, Task> _script;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _acceptLoop;
    private readonly List<Task> _connections = [];

    private ScriptedServer(Func<RawConnection, Task> script)
    {
        _script = script;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _acceptLoop = AcceptLoopAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public Uri Uri => new($"nbd://127.0.0.1:{Port}/");

    public Uri UriFor(string export) => new($"nbd://127.0.0.1:{Port}/{Uri.EscapeDataString(export)}");

    public int Accepted { get; private set; }

    public Exception? ScriptError { get; private set; }

    public static ScriptedServer Start(Func<RawConnection, Task> script) => new(script);

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener.Stop();
        try
        {
            await _acceptLoop;
        }
        catch
        {
        }

        Task[] connections;
        lock (_connections)
        {
            connections = [.. _connections];
        }

        await Task.WhenAny(Task.WhenAll(connections), Task.Delay(5000));
        _stop.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch
            {
                return;
            }

            Accepted++;
            var task = RunAsync(socket);
            lock (_connections)
            {
                _connections.Add(task);
            }
        }
    }

    private async Task RunAsync(Socket socket)
    {
        using var stream = new NetworkStream(socket, ownsSocket: true);
        var connection = new RawConnection(stream, _stop.Token);
        try
        {
            await _script(connection);
        }
        catch (Exception ex) when (ex is IOException or EndOfStreamException or OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // The client went away; that is what many scripts expect.
        }
        catch (Exception ex)
        {
            ScriptError = ex;
        }
    }
}

/// <summary>One accepted connection with helpers to speak raw NBD from the server side.</summary>
public sealed class RawConnection
{
    public const ulong NbdMagic = 0x4e42444d41474943UL;
    public const ulong IHaveOpt = 0x49484156454F5054UL;
    public const ulong OptReplyMagic = 0x0003e889045565a9UL;
    public const uint SimpleMagic = 0x67446698;
    public const uint StructuredMagic = 0x668e33ef;

    private readonly Stream _stream;
    private readonly CancellationToken _token;

    public RawConnection(Stream stream, CancellationToken token)
    {
        _stream = stream;
        _token = token;
    }

    public Stream Stream => _stream;

    public async Task SendAsync(byte[] bytes)
    {
        await _stream.WriteAsync(bytes, _token);
        await _stream.FlushAsync(_token);
    }

    public async Task<byte[]> ReadAsync(int count)
    {
        var buffer = new byte[count];
        await _stream.ReadExactlyAsync(buffer, _token);
        return buffer;
    }

    public Task SendNewstyleGreetingAsync(ushort flags = 3) => SendAsync(Bytes.U64(NbdMagic).U64(IHaveOpt).U16(flags).Build());

    /// <summary>Reads the client flags and returns them.</summary>
    public async Task<uint> ReadClientFlagsAsync() => BinaryPrimitives.ReadUInt32BigEndian(await ReadAsync(4));

    public async Task<(uint Option, byte[] Data)> ReadOptionAsync()
    {
        var header = await ReadAsync(16);
        if (BinaryPrimitives.ReadUInt64BigEndian(header) != IHaveOpt)
        {
            throw new InvalidDataException("bad option magic from client");
        }

        var option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
        return (option, await ReadAsync((int)length));
    }

    public Task SendOptionReplyAsync(uint option, uint type, byte[]? data = null, uint? declaredLength = null) =>
        SendAsync(Bytes.U64(OptReplyMagic).U32(option).U32(type).U32(declaredLength ?? (uint)(data?.Length ?? 0)).Raw(data ?? []).Build());

    public static byte[] InfoExport(ulong size, ushort flags) => Bytes.U16(0).U64(size).U16(flags).Build();

    public static byte[] InfoBlockSize(uint min, uint preferred, uint max) => Bytes.U16(3).U32(min).U32(preferred).U32(max).Build();

    public static byte[] Message(string text) => Encoding.UTF8.GetBytes(text);

    /// <summary>
    /// Plays a well-behaved server up to transmission: acks STRUCTURED_REPLY (if <paramref name="structured"/>),
    /// grants base:allocation as id 1, answers GO with the export. Returns when transmission starts.
    /// </summary>
    public async Task NegotiateAsync(ulong size = 1 << 20, ushort flags = 0x0D6D, bool structured = true, byte[]? blockSize = null)
    {
        await SendNewstyleGreetingAsync();
        await ReadClientFlagsAsync();
        while (true)
        {
            var (option, data) = await ReadOptionAsync();
            switch (option)
            {
                case 8:
                    await SendOptionReplyAsync(option, structured ? 1u : 0x80000001u);
                    break;
                case 10:
                    await SendOptionReplyAsync(option, 4, Bytes.U32(1).Raw(Message("base:allocation")).Build());
                    await SendOptionReplyAsync(option, 1);
                    break;
                case 7:
                    await SendOptionReplyAsync(option, 3, InfoExport(size, flags));
                    if (blockSize is not null)
                    {
                        await SendOptionReplyAsync(option, 3, blockSize);
                    }

                    await SendOptionReplyAsync(option, 1);
                    return;
                default:
                    await SendOptionReplyAsync(option, 0x80000001);
                    break;
            }
        }
    }

    public async Task<RawRequest> ReadRequestAsync()
    {
        var header = await ReadAsync(28);
        var request = new RawRequest(
            BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6)),
            BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4)),
            BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8)),
            BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(16)),
            BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24)),
            null);
        return request.Type == 1 ? request with { Payload = await ReadAsync((int)request.Length) } : request;
    }

    public Task SendSimpleReplyAsync(ulong cookie, uint error = 0, byte[]? data = null) =>
        SendAsync(Bytes.U32(SimpleMagic).U32(error).U64(cookie).Raw(data ?? []).Build());

    public Task SendChunkAsync(ulong cookie, ushort type, byte[] payload, bool done = true, uint? declaredLength = null) =>
        SendAsync(ChunkBytes(cookie, type, payload, done, declaredLength));

    public static byte[] ChunkBytes(ulong cookie, ushort type, byte[] payload, bool done = true, uint? declaredLength = null) =>
        Bytes.U32(StructuredMagic).U16((ushort)(done ? 1 : 0)).U16(type).U64(cookie).U32(declaredLength ?? (uint)payload.Length).Raw(payload).Build();
}

public sealed record RawRequest(ushort Type, ushort Flags, ulong Cookie, ulong Offset, uint Length, byte[]? Payload);

/// <summary>A tiny big-endian byte builder for scripts.</summary>
public sealed class Bytes
{
    private readonly List<byte> _bytes = [];

    public static Bytes U16(ushort value) => new Bytes().U16Add(value);

    public static Bytes U32(uint value) => new Bytes().U32Add(value);

    public static Bytes U64(ulong value) => new Bytes().U64Add(value);

    public Bytes U16Add(ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(b, value);
        _bytes.AddRange(b.ToArray());
        return this;
    }

    public Bytes U32Add(uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        _bytes.AddRange(b.ToArray());
        return this;
    }

    public Bytes U64Add(ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, value);
        _bytes.AddRange(b.ToArray());
        return this;
    }

    public Bytes Raw(byte[] value)
    {
        _bytes.AddRange(value);
        return this;
    }

    public byte[] Build() => [.. _bytes];
}

public static class BytesExtensions
{
    public static Bytes U16(this Bytes bytes, ushort value) => bytes.U16Add(value);

    public static Bytes U32(this Bytes bytes, uint value) => bytes.U32Add(value);

    public static Bytes U64(this Bytes bytes, ulong value) => bytes.U64Add(value);
}
