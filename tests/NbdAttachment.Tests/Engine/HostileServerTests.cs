using NbdAttachment.Client;
using NbdAttachment.Tests.Support;

namespace NbdAttachment.Tests.Engine;

/// <summary>Each broken or hostile server behaviour ends in a typed error, quickly, without a hang.</summary>
public sealed class HostileServerTests
{
    private static readonly NbdClientOptions NoReconnect = new()
    {
        Reconnect = NbdReconnectPolicy.Disabled,
        ConnectTimeout = TimeSpan.FromSeconds(5),
    };

    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Greeting_with_bad_magic_is_not_an_nbd_server()
    {
        await using var server = ScriptedServer.Start(c => c.SendAsync(Bytes.U64(0x1122334455667788).U64(RawConnection.IHaveOpt).U16(3).Build()));
        var error = await ConnectFails<NbdNegotiationException>(server.Uri);
        error.Error.Should().Be(NbdNegotiationError.NotAnNbdServer);
    }

    [Fact]
    public async Task Greeting_with_unknown_style_magic_is_rejected()
    {
        await using var server = ScriptedServer.Start(c => c.SendAsync(Bytes.U64(RawConnection.NbdMagic).U64(42).Build()));
        (await ConnectFails<NbdNegotiationException>(server.Uri)).Error.Should().Be(NbdNegotiationError.NotAnNbdServer);
    }

    [Fact]
    public async Task Server_closing_during_greeting_is_a_connection_error()
    {
        await using var server = ScriptedServer.Start(c => c.SendAsync(Bytes.U64(RawConnection.NbdMagic).Build()));
        await ConnectFails<NbdConnectionException>(server.Uri);
    }

    [Fact]
    public async Task Server_that_never_speaks_times_out()
    {
        await using var server = ScriptedServer.Start(c => Task.Delay(Timeout.Infinite, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(8)));
        var options = NoReconnect with { ConnectTimeout = TimeSpan.FromMilliseconds(300) };
        var act = async () => await NbdClient.ConnectAsync(server.Uri, options);
        (await act.Should().ThrowAsync<NbdTimeoutException>().WaitAsync(Bound)).Which.IsTransient.Should().BeTrue();
    }

    [Fact]
    public async Task Cancelling_a_connect_to_a_silent_server_ends_the_blocked_receive()
    {
        // Silent until the client goes away (its close ends this read).
        await using var server = ScriptedServer.Start(c => c.ReadAsync(1));
        using var cancel = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        var started = System.Diagnostics.Stopwatch.StartNew();
        var connect = NbdClient.ConnectAsync(server.Uri, NoReconnect, cancel.Token);

        // The socket blocks, but never the caller's thread: ConnectAsync returns while the handshake waits.
        started.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(1));
        var act = async () => await connect;
        await act.Should().ThrowAsync<OperationCanceledException>().WaitAsync(Bound);
        started.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(4.5), "cancellation closes the socket; the connect timeout is 5 s");
    }

    [Fact]
    public async Task A_server_that_stops_reading_cannot_hold_dispose_or_a_thread()
    {
        // Negotiates, then never reads: the client's sends fill the socket buffers and its writer blocks in send().
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.NegotiateAsync(size: 64 << 20);
            await Task.Delay(TimeSpan.FromSeconds(3));
        });
        var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect with { DrainTimeout = TimeSpan.FromMilliseconds(200) });
        var payload = new byte[1 << 20];
        var writes = Enumerable.Range(0, 16).Select(i => client.WriteAsync(i * (long)payload.Length, payload).AsTask()).ToArray();
        await Task.Delay(300); // long enough for the sends to stall

        var started = System.Diagnostics.Stopwatch.StartNew();
        await client.DisposeAsync().AsTask().WaitAsync(Bound);
        started.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(5), "disposing closes the socket, which wakes the blocked send");
        foreach (var write in writes)
        {
            await FluentActions.Awaiting(() => write.WaitAsync(Bound)).Should().ThrowAsync<Exception>();
        }
    }

    [Fact]
    public async Task Option_reply_with_bad_magic_is_a_protocol_error()
    {
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendNewstyleGreetingAsync();
            await c.ReadClientFlagsAsync();
            await c.ReadOptionAsync();
            await c.SendAsync(Bytes.U64(0xdeadbeef).U32(8).U32(1).U32(0).Build());
        });
        (await ConnectFails<NbdProtocolException>(server.Uri)).Message.Should().Contain("magic");
    }

    [Fact]
    public async Task Option_reply_for_another_option_is_a_protocol_error()
    {
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendNewstyleGreetingAsync();
            await c.ReadClientFlagsAsync();
            await c.ReadOptionAsync();
            await c.SendOptionReplyAsync(7, 1);
        });
        (await ConnectFails<NbdProtocolException>(server.Uri)).Message.Should().Contain("NBD_OPT_GO");
    }

    [Fact]
    public async Task Huge_option_reply_length_is_refused_without_allocating()
    {
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendNewstyleGreetingAsync();
            await c.ReadClientFlagsAsync();
            await c.ReadOptionAsync();
            await c.SendOptionReplyAsync(8, 0x80000001, declaredLength: 0xFFFFFFF0);
        });
        (await ConnectFails<NbdProtocolException>(server.Uri)).Message.Should().Contain("limit");
    }

    [Fact]
    public async Task Ack_with_data_is_a_protocol_error()
    {
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendNewstyleGreetingAsync();
            await c.ReadClientFlagsAsync();
            await c.ReadOptionAsync();
            await c.SendOptionReplyAsync(8, 1, [1, 2, 3]);
        });
        (await ConnectFails<NbdProtocolException>(server.Uri)).Message.Should().Contain("ACK");
    }

    [Fact]
    public async Task Go_ack_without_export_info_is_a_protocol_error()
    {
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendNewstyleGreetingAsync();
            await c.ReadClientFlagsAsync();
            while (true)
            {
                var (option, _) = await c.ReadOptionAsync();
                await c.SendOptionReplyAsync(option, option == 7 ? 1u : 0x80000001u);
                if (option == 7)
                {
                    return;
                }
            }
        });
        (await ConnectFails<NbdProtocolException>(server.Uri)).Message.Should().Contain("NBD_INFO_EXPORT");
    }

    [Theory]
    [InlineData(11)]
    [InlineData(13)]
    public async Task Info_export_with_wrong_length_is_a_protocol_error(int length)
    {
        await using var server = GoServer(async (c, option) =>
        {
            await c.SendOptionReplyAsync(option, 3, RawConnection.InfoExport(4096, 1).Concat(new byte[2]).Take(length).ToArray());
            await c.SendOptionReplyAsync(option, 1);
        });
        (await ConnectFails<NbdProtocolException>(server.Uri)).Message.Should().Contain("exactly 12");
    }

    [Fact]
    public async Task Block_size_info_with_wrong_length_is_a_protocol_error()
    {
        await using var server = GoServer(async (c, option) =>
        {
            await c.SendOptionReplyAsync(option, 3, RawConnection.InfoExport(4096, 1));
            await c.SendOptionReplyAsync(option, 3, Bytes.U16(3).U32(512).Build());
            await c.SendOptionReplyAsync(option, 1);
        });
        (await ConnectFails<NbdProtocolException>(server.Uri)).Message.Should().Contain("exactly 14");
    }

    [Theory]
    [InlineData(0x80000001u, NbdNegotiationError.Unsupported)]
    [InlineData(0x80000002u, NbdNegotiationError.Policy)]
    [InlineData(0x80000003u, NbdNegotiationError.Invalid)]
    [InlineData(0x80000004u, NbdNegotiationError.Platform)]
    [InlineData(0x80000005u, NbdNegotiationError.TlsRequired)]
    [InlineData(0x80000006u, NbdNegotiationError.UnknownExport)]
    [InlineData(0x80000007u, NbdNegotiationError.Shutdown)]
    [InlineData(0x80000008u, NbdNegotiationError.BlockSizeRequired)]
    [InlineData(0x80000009u, NbdNegotiationError.TooBig)]
    [InlineData(0x8000000Au, NbdNegotiationError.ExtendedHeadersRequired)]
    [InlineData(0x8000FFFFu, NbdNegotiationError.Other)]
    public async Task Every_info_option_error_becomes_a_typed_negotiation_error_with_the_server_message(uint reply, NbdNegotiationError expected)
    {
        // INFO has no fallback, so even ERR_UNSUP must surface as an error.
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendNewstyleGreetingAsync();
            await c.ReadClientFlagsAsync();
            while (true)
            {
                var (option, _) = await c.ReadOptionAsync();
                if (option == 6)
                {
                    await c.SendOptionReplyAsync(option, reply, RawConnection.Message("server says no"));
                    await c.ReadOptionAsync(); // ABORT
                    return;
                }

                await c.SendOptionReplyAsync(option, 0x80000001);
            }
        });

        var act = async () => await NbdClient.GetExportInfoAsync(NbdUri.Parse(server.UriFor("disk")), NoReconnect);
        var error = (await act.Should().ThrowAsync<NbdNegotiationException>().WaitAsync(Bound)).Which;
        error.Error.Should().Be(expected);
        error.Option.Should().Be("NBD_OPT_INFO");
        if (expected != NbdNegotiationError.Unsupported)
        {
            error.ServerMessage.Should().Be("server says no");
        }
    }

    [Theory]
    [InlineData(0x80000002u, NbdNegotiationError.Policy)]
    [InlineData(0x80000005u, NbdNegotiationError.TlsRequired)]
    [InlineData(0x80000006u, NbdNegotiationError.UnknownExport)]
    [InlineData(0x80000007u, NbdNegotiationError.Shutdown)]
    public async Task Go_errors_become_typed_negotiation_errors(uint reply, NbdNegotiationError expected)
    {
        await using var server = GoServer((c, option) => c.SendOptionReplyAsync(option, reply, RawConnection.Message("nope")));
        var error = await ConnectFails<NbdNegotiationException>(server.UriFor("missing"));
        error.Error.Should().Be(expected);
        error.ServerMessage.Should().Be("nope");
        error.Message.Should().Contain("nope");
    }

    [Fact]
    public async Task Transmission_flags_without_has_flags_are_refused()
    {
        await using var server = ScriptedServer.Start(c => c.NegotiateAsync(flags: 0));
        (await ConnectFails<NbdNegotiationException>(server.Uri)).Error.Should().Be(NbdNegotiationError.UnusableExport);
    }

    [Fact]
    public async Task Oldstyle_server_is_supported()
    {
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendAsync(Bytes.U64(RawConnection.NbdMagic).U64(0x0000420281861253).U64(8192).U32(0x0001).Raw(new byte[124]).Build());
            var request = await c.ReadRequestAsync();
            await c.SendSimpleReplyAsync(request.Cookie, 0, Enumerable.Repeat((byte)7, (int)request.Length).ToArray());
            await c.ReadRequestAsync();
        });
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        client.Export.HandshakeStyle.Should().Be(NbdHandshakeStyle.Oldstyle);
        client.Export.Size.Should().Be(8192);
        var buffer = new byte[512];
        await client.ReadAsync(0, buffer).AsTask().WaitAsync(Bound);
        buffer.Should().OnlyContain(b => b == 7);
    }

    [Fact]
    public async Task Oldstyle_server_with_handshake_flags_is_a_protocol_error()
    {
        await using var server = ScriptedServer.Start(c =>
            c.SendAsync(Bytes.U64(RawConnection.NbdMagic).U64(0x0000420281861253).U64(8192).U32(0x00010001).Raw(new byte[124]).Build()));
        await ConnectFails<NbdProtocolException>(server.Uri);
    }

    [Fact]
    public async Task Non_fixed_newstyle_uses_export_name_with_zero_padding()
    {
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendNewstyleGreetingAsync(flags: 0);
            (await c.ReadClientFlagsAsync()).Should().Be(0u);
            var (option, data) = await c.ReadOptionAsync();
            option.Should().Be(1u);
            System.Text.Encoding.UTF8.GetString(data).Should().Be("disk");
            await c.SendAsync(Bytes.U64(1 << 16).U16(0x0003).Raw(new byte[124]).Build());
            await c.ReadRequestAsync();
        });
        await using var client = await NbdClient.ConnectAsync(server.UriFor("disk"), NoReconnect);
        client.Export.HandshakeStyle.Should().Be(NbdHandshakeStyle.Newstyle);
        client.Export.IsReadOnly.Should().BeTrue();
        client.Export.StructuredReplies.Should().BeFalse();
        server.ScriptError.Should().BeNull();
    }

    [Fact]
    public async Task Export_name_refused_by_closing_is_a_clear_negotiation_error()
    {
        await using var server = ScriptedServer.Start(async c =>
        {
            await c.SendNewstyleGreetingAsync(flags: 2);
            await c.ReadClientFlagsAsync();
            await c.ReadOptionAsync();
        });
        (await ConnectFails<NbdNegotiationException>(server.UriFor("nope"))).Error.Should().Be(NbdNegotiationError.ExportRefused);
    }

    [Fact]
    public async Task Reply_with_bad_magic_fails_the_request_and_the_client()
    {
        await using var server = TransmissionServer(async (c, r) => await c.SendAsync(Bytes.U32(0x12345678).U32(0).U64(r.Cookie).Build()));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        var error = await ReadFails<NbdProtocolException>(client);
        error.Message.Should().Contain("magic");
        client.State.Should().Be(NbdClientState.Failed);
        client.Failure.Should().BeOfType<NbdProtocolException>();
        var again = async () => await client.ReadAsync(0, new byte[512]);
        await again.Should().ThrowAsync<NbdProtocolException>();
    }

    [Fact]
    public async Task Simple_success_for_unknown_cookie_without_structured_replies_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendSimpleReplyAsync(r.Cookie ^ 0xFFFF0000), structured: false);
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("unknown cookie");
    }

    [Fact]
    public async Task Structured_chunk_for_unknown_cookie_is_skipped()
    {
        await using var server = TransmissionServer(async (c, r) =>
        {
            await c.SendChunkAsync(r.Cookie + 0x100000000, 1, Bytes.U64(r.Offset).Raw(new byte[r.Length]).Build());
            await c.SendChunkAsync(r.Cookie, 1, Bytes.U64(r.Offset).Raw(Enumerable.Repeat((byte)9, (int)r.Length).ToArray()).Build());
        });
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        var buffer = new byte[4096];
        await client.ReadAsync(0, buffer).AsTask().WaitAsync(Bound);
        buffer.Should().OnlyContain(b => b == 9);
    }

    [Fact]
    public async Task Offset_data_outside_the_request_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 1, Bytes.U64(r.Offset + 8).Raw(new byte[r.Length]).Build()));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("outside");
    }

    [Fact]
    public async Task Offset_data_longer_than_the_request_is_fatal_before_reading_it()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 1, Bytes.U64(r.Offset).Build(), declaredLength: 0x7FFFFFFF));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("OFFSET_DATA");
    }

    [Fact]
    public async Task Hole_chunk_with_wrong_length_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 2, Bytes.U64(r.Offset).U32(r.Length).U32(0).Build()));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("OFFSET_HOLE");
    }

    [Fact]
    public async Task None_chunk_without_done_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 0, [], done: false));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("DONE");
    }

    [Fact]
    public async Task Unknown_chunk_type_without_error_bit_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 77, [1, 2]));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("unknown chunk type");
    }

    [Fact]
    public async Task Unknown_error_chunk_fails_only_that_request()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 0x8077, Bytes.U32(5).U16(2).Raw("hi"u8.ToArray()).Build()));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        var error = await ReadFails<NbdServerException>(client);
        error.Error.Should().Be(NbdError.IOError);
        error.ServerMessage.Should().Be("hi");
        client.State.Should().Be(NbdClientState.Connected);
    }

    [Fact]
    public async Task Read_reply_that_does_not_cover_the_range_fails_the_read()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 1, Bytes.U64(r.Offset).Raw(new byte[r.Length / 2]).Build()));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("covered");
        client.State.Should().Be(NbdClientState.Connected);
    }

    [Fact]
    public async Task Error_chunk_with_zero_error_is_a_protocol_error_for_the_request()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 0x8001, Bytes.U32(0).U16(0).Build()));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        await ReadFails<NbdProtocolException>(client);
    }

    [Fact]
    public async Task Simple_reply_to_read_after_structured_replies_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendSimpleReplyAsync(r.Cookie, 0, new byte[r.Length]));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("simple reply to READ");
    }

    [Fact]
    public async Task Structured_reply_when_not_negotiated_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 0, []), structured: false);
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdProtocolException>(client)).Message.Should().Contain("not negotiated");
    }

    [Fact]
    public async Task Zero_length_block_status_extent_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 5, Bytes.U32(1).U32(0).U32(0).Build()));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        var act = async () => await client.GetBlockStatusAsync(0, 4096);
        (await act.Should().ThrowAsync<NbdProtocolException>().WaitAsync(Bound)).Which.Message.Should().Contain("zero-length");
    }

    [Fact]
    public async Task Oversized_block_status_chunk_is_fatal()
    {
        await using var server = TransmissionServer((c, r) => c.SendChunkAsync(r.Cookie, 5, Bytes.U32(1).Build(), declaredLength: 0x40000004));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        var act = async () => await client.GetBlockStatusAsync(0, 4096);
        await act.Should().ThrowAsync<NbdProtocolException>().WaitAsync(Bound);
    }

    [Fact]
    public async Task Eof_in_the_middle_of_a_reply_is_a_connection_error()
    {
        await using var server = TransmissionServer(async (c, r) =>
        {
            await c.SendAsync(RawConnection.ChunkBytes(r.Cookie, 1, Bytes.U64(r.Offset).Raw(new byte[r.Length]).Build()).Take(100).ToArray());
            c.Stream.Close();
        });
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdConnectionException>(client)).Message.Should().Contain("middle of a reply");
        client.State.Should().Be(NbdClientState.Failed);
    }

    [Fact]
    public async Task Server_error_in_simple_reply_is_typed()
    {
        await using var server = TransmissionServer((c, r) => c.SendSimpleReplyAsync(r.Cookie, 28), structured: false);
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdServerException>(client)).Error.Should().Be(NbdError.NoSpace);
    }

    [Fact]
    public async Task Unknown_server_error_number_maps_to_invalid_argument()
    {
        await using var server = TransmissionServer((c, r) => c.SendSimpleReplyAsync(r.Cookie, 9999), structured: false);
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        (await ReadFails<NbdServerException>(client)).Error.Should().Be(NbdError.InvalidArgument);
    }

    [Fact]
    public async Task Invalid_block_sizes_are_ignored_and_defaults_used()
    {
        await using var server = ScriptedServer.Start(c => c.NegotiateAsync(blockSize: RawConnection.InfoBlockSize(3, 4096, 1 << 20)));
        await using var client = await NbdClient.ConnectAsync(server.Uri, NoReconnect);
        client.Export.BlockSizesAdvertised.Should().BeFalse();
        client.Export.MinimumBlockSize.Should().Be(1);
        client.Export.MaximumPayloadSize.Should().Be(32u << 20);
    }

    private static ScriptedServer GoServer(Func<RawConnection, uint, Task> onGo) => ScriptedServer.Start(async c =>
    {
        await c.SendNewstyleGreetingAsync();
        await c.ReadClientFlagsAsync();
        while (true)
        {
            var (option, _) = await c.ReadOptionAsync();
            if (option == 7)
            {
                await onGo(c, option);
                await c.ReadAsync(1);
                return;
            }

            await c.SendOptionReplyAsync(option, 0x80000001);
        }
    });

    private static ScriptedServer TransmissionServer(Func<RawConnection, RawRequest, Task> onRequest, bool structured = true) => ScriptedServer.Start(async c =>
    {
        await c.NegotiateAsync(structured: structured);
        while (true)
        {
            var request = await c.ReadRequestAsync();
            if (request.Type == 2)
            {
                return;
            }

            await onRequest(c, request);
        }
    });

    private static async Task<T> ConnectFails<T>(Uri uri)
        where T : Exception
    {
        var act = async () => await NbdClient.ConnectAsync(uri, NoReconnect);
        return (await act.Should().ThrowAsync<T>().WaitAsync(Bound)).Which;
    }

    private static async Task<T> ReadFails<T>(NbdClient client)
        where T : Exception
    {
        var act = async () => await client.ReadAsync(0, new byte[4096]);
        return (await act.Should().ThrowAsync<T>().WaitAsync(Bound)).Which;
    }
}
