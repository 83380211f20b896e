using NbdAttachment.Client;
using NbdAttachment.InteropTests.Servers;
using static NbdAttachment.InteropTests.Client.ClientTestSupport;

namespace NbdAttachment.InteropTests.Client;

/// <summary>NbdAttachment's client against nbd-server (the reference server).</summary>
public sealed class NbdServerClientTests
{
    private const int MiB = 1024 * 1024;

    private static readonly NbdServerOptions TwoExports = new()
    {
        Exports =
        [
            new NbdServerExport { Name = "disk", Size = 8 * MiB },
            new NbdServerExport { Name = "ro", Size = 2 * MiB, ReadOnly = true },
        ],
    };

    [SkippableTheory]
    [InlineData(ListenKind.Tcp, true)]
    [InlineData(ListenKind.Unix, true)]
    [InlineData(ListenKind.Tcp, false)]
    public Task Named_export_write_read_flush_trim_zeroes(ListenKind listen, bool structured) => Bounded(async () =>
    {
        await using var server = await NbdServerProcess.StartAsync(TwoExports with { Listen = listen });

        var listing = await NbdClient.ListExportsAsync(Parse(server.UriFor(string.Empty)), Plain);
        listing.Select(l => l.Name).Should().BeEquivalentTo(["disk", "ro"]);

        await using var client = await ConnectAsync(server.UriFor("disk"), Plain with { RequestStructuredReplies = structured });
        var e = client.Export;
        e.Size.Should().Be(8 * MiB);
        if (!structured)
        {
            e.StructuredReplies.Should().BeFalse();
        }

        var data = RandomBytes(3 * MiB + 1, 5);
        await client.WriteAsync(MiB + 1, data, e.CanFua ? NbdCommandOptions.ForceUnitAccess : NbdCommandOptions.None);
        await client.WriteAsync(0, new byte[] { 9 });
        if (e.CanFlush)
        {
            await client.FlushAsync();
        }

        if (e.CanWriteZeroes)
        {
            await client.WriteZeroesAsync(MiB + 1 + 100, 50);
            Array.Clear(data, 100, 50);
        }

        if (e.CanTrim)
        {
            await client.TrimAsync(6 * MiB, MiB);
        }

        var back = new byte[data.Length];
        await client.ReadAsync(MiB + 1, back);
        back.ShouldEqualBytes(data);
        var head = new byte[2];
        await client.ReadAsync(0, head);
        head.Should().Equal(9, 0);

        // The backing file holds what the client wrote.
        await client.FlushAsync();
        var file = await File.ReadAllBytesAsync(server.FileOf("disk"));
        file.AsSpan(MiB + 1, data.Length).SequenceEqual(data).Should().BeTrue();
    });

    [SkippableFact]
    public Task Read_only_export_and_unknown_export() => Bounded(async () =>
    {
        await using var server = await NbdServerProcess.StartAsync(TwoExports);

        await using (var ro = await ConnectAsync(server.UriFor("ro")))
        {
            ro.Export.IsReadOnly.Should().BeTrue();
            ro.Export.Size.Should().Be(2 * MiB);
            (await FluentActions.Awaiting(async () => await ro.WriteAsync(0, new byte[4096])).Should().ThrowAsync<NbdRequestRejectedException>())
                .Which.Reason.Should().Be(NbdRequestRejectReason.ReadOnly);
            var buffer = new byte[2 * MiB];
            await ro.ReadAsync(0, buffer);
            buffer.Should().OnlyContain(b => b == 0);
        }

        var error = (await FluentActions.Awaiting(async () => await ConnectAsync(server.UriFor("missing")))
            .Should().ThrowAsync<NbdNegotiationException>()).Which.Error;
        error.Should().BeOneOf(NbdNegotiationError.UnknownExport, NbdNegotiationError.ExportRefused);
    });
}
