using NbdAttachment.Client;
using NbdAttachment.Testing;

namespace NbdAttachment.Tests.Ecosystem;

public sealed class NbdStreamTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Stream_reports_the_export_geometry()
    {
        await using var server = await NbdTestServer.StartAsync(Single(new NbdTestExportOptions("", 3 * 1024 * 1024)));
        await using var stream = new NbdStream(await NbdClient.ConnectAsync(server.Uri));
        stream.Length.Should().Be(3 * 1024 * 1024);
        stream.CanRead.Should().BeTrue();
        stream.CanSeek.Should().BeTrue();
        stream.CanWrite.Should().BeTrue();
        stream.Position.Should().Be(0);
        stream.Seek(-10, SeekOrigin.End).Should().Be(stream.Length - 10);
        stream.Seek(4, SeekOrigin.Current).Should().Be(stream.Length - 6);
        stream.Seek(7, SeekOrigin.Begin).Should().Be(7);
        stream.Invoking(s => s.SetLength(10)).Should().Throw<NotSupportedException>();
        stream.Invoking(s => s.Seek(-1, SeekOrigin.Begin)).Should().Throw<IOException>();
    }

    [Fact]
    public async Task CopyToAsync_copies_a_file_like_stream_both_ways()
    {
        const int size = 5 * 1024 * 1024 + 123;
        await using var server = await NbdTestServer.StartAsync(Single(new NbdTestExportOptions("", 8 * 1024 * 1024)));
        await using var stream = new NbdStream(await NbdClient.ConnectAsync(server.Uri));
        var data = Pattern(size, 11);
        await new MemoryStream(data).CopyToAsync(stream).WaitAsync(Bound);
        stream.Position.Should().Be(size);
        await stream.FlushAsync();
        server.GetExport().ReadBytes(0, size).Should().Equal(data);

        stream.Position = 0;
        var back = new MemoryStream();
        await stream.CopyToAsync(back).WaitAsync(Bound);
        back.Length.Should().Be(stream.Length, "a copy reads to the end of the export");
        back.ToArray().AsSpan(0, size).SequenceEqual(data).Should().BeTrue();
        back.ToArray().AsSpan(size).ToArray().Should().OnlyContain(b => b == 0);
    }

    [Theory]
    [InlineData(1u)]
    [InlineData(512u)]
    [InlineData(4096u)]
    public async Task Random_positions_and_lengths_match_a_shadow_array(uint minimumBlockSize)
    {
        const int size = 1024 * 1024;
        var export = new NbdTestExportOptions("", size) { MinimumBlockSize = minimumBlockSize, MaximumBlockSize = 64 * 1024 };
        await using var server = await NbdTestServer.StartAsync(Single(export));
        await using var stream = new NbdStream(await NbdClient.ConnectAsync(server.Uri));
        stream.Client.Export.MinimumBlockSize.Should().Be(minimumBlockSize);
        var shadow = new byte[size];
        var random = new Random(1234 + (int)minimumBlockSize);
        for (var i = 0; i < 200; i++)
        {
            var position = random.Next(size);
            var length = random.Next(Math.Min(size - position, 200_000) + 1);
            stream.Position = position;
            if (random.Next(2) == 0)
            {
                var data = new byte[length];
                random.NextBytes(data);
                if (random.Next(2) == 0)
                {
                    await stream.WriteAsync(data).AsTask().WaitAsync(Bound);
                }
                else
                {
                    stream.Write(data, 0, data.Length);
                }

                data.CopyTo(shadow, position);
            }
            else
            {
                var buffer = new byte[length];
                var read = random.Next(2) == 0 ? await stream.ReadAsync(buffer).AsTask().WaitAsync(Bound) : stream.Read(buffer.AsSpan());
                read.Should().Be(length);
                buffer.AsSpan().SequenceEqual(shadow.AsSpan(position, length)).Should().BeTrue($"read {length} at {position} (iteration {i})");
            }

            stream.Position.Should().Be(position + length);
        }

        server.GetExport().ReadBytes(0, size).AsSpan().SequenceEqual(shadow).Should().BeTrue();
    }

    [Fact]
    public async Task Unaligned_writes_on_a_4096_byte_block_export_keep_neighbours()
    {
        var export = new NbdTestExportOptions("", 64 * 1024) { MinimumBlockSize = 4096 };
        await using var server = await NbdTestServer.StartAsync(Single(export) with { RequireBlockSizeInfo = true });
        var background = Pattern(64 * 1024, 5);
        server.GetExport().WriteBytes(0, background);
        await using var stream = new NbdStream(await NbdClient.ConnectAsync(server.Uri));
        stream.Client.Export.MinimumBlockSize.Should().Be(4096);

        stream.Position = 4093;
        stream.Write([1, 2, 3, 4, 5, 6, 7]);
        stream.WriteByte(9);
        new byte[] { 1, 2, 3, 4, 5, 6, 7 }.CopyTo(background, 4093);
        background[4100] = 9;

        server.GetExport().ReadBytes(0, background.Length).Should().Equal(background);
        stream.Position = 4092;
        var buffer = new byte[10];
        stream.ReadExactly(buffer);
        buffer.Should().Equal(background.AsSpan(4092, 10).ToArray());
    }

    [Fact]
    public async Task Reads_stop_at_the_end_of_the_export_and_writes_cannot_grow_it()
    {
        await using var server = await NbdTestServer.StartAsync(Single(new NbdTestExportOptions("", 10_000)));
        server.GetExport().WriteBytes(9_990, Pattern(10, 3));
        await using var stream = new NbdStream(await NbdClient.ConnectAsync(server.Uri));

        stream.Position = 9_990;
        var buffer = new byte[100];
        (await stream.ReadAsync(buffer)).Should().Be(10);
        buffer.AsSpan(0, 10).ToArray().Should().Equal(Pattern(10, 3));
        stream.Position.Should().Be(10_000);
        (await stream.ReadAsync(buffer)).Should().Be(0);
        stream.ReadByte().Should().Be(-1);

        stream.Position = 20_000;
        (await stream.ReadAsync(buffer)).Should().Be(0);
        stream.Read(buffer, 0, 10).Should().Be(0);

        stream.Position = 9_995;
        var act = async () => await stream.WriteAsync(new byte[10]);
        (await act.Should().ThrowAsync<NotSupportedException>()).Which.Message.Should().Contain("fixed size");
        stream.Position.Should().Be(9_995, "a failed write does not move the position");
        server.GetExport().ReadBytes(9_990, 10).Should().Equal(Pattern(10, 3), "a write past the end writes nothing");
        await stream.WriteAsync(new byte[5]);
        stream.Position.Should().Be(10_000);
    }

    [Fact]
    public async Task Read_only_export_cannot_be_written()
    {
        await using var server = await NbdTestServer.StartAsync(Single(new NbdTestExportOptions("", 65536) { ReadOnly = true }));
        await using var stream = new NbdStream(await NbdClient.ConnectAsync(server.Uri));
        stream.CanWrite.Should().BeFalse();
        stream.CanRead.Should().BeTrue();
        stream.Invoking(s => s.Write(new byte[1], 0, 1)).Should().Throw<NotSupportedException>().WithMessage("*read-only*");
        await stream.FlushAsync();
        server.Statistics.Flushes.Should().Be(0);
        (await stream.ReadAsync(new byte[16])).Should().Be(16);
    }

    [Fact]
    public async Task Flush_reaches_the_server()
    {
        await using var server = await NbdTestServer.StartAsync();
        await using var stream = new NbdStream(await NbdClient.ConnectAsync(server.Uri));
        stream.Write(Pattern(1000, 2));
        stream.Flush();
        await stream.FlushAsync();
        server.Statistics.Flushes.Should().Be(2);
    }

    [Fact]
    public async Task Dispose_closes_the_client_unless_leave_open()
    {
        await using var server = await NbdTestServer.StartAsync();
        var client = await NbdClient.ConnectAsync(server.Uri);
        await using (var stream = new NbdStream(client, leaveOpen: true))
        {
            await stream.WriteAsync(new byte[] { 1, 2, 3 });
        }

        client.State.Should().Be(NbdClientState.Connected);
        var back = new byte[3];
        await client.ReadAsync(0, back);
        back.Should().Equal(1, 2, 3);

        var owning = new NbdStream(client);
        owning.Dispose();
        client.State.Should().Be(NbdClientState.Closed);
        owning.CanRead.Should().BeFalse();
        owning.Invoking(s => s.Position).Should().Throw<ObjectDisposedException>();
        await owning.DisposeAsync();
    }

    internal static NbdTestServerOptions Single(NbdTestExportOptions export) => new() { Exports = [export] };

    internal static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        for (var i = 0; i < length; i++)
        {
            data[i] = (byte)((i * 31) + (i >> 9) + seed);
        }

        return data;
    }
}
