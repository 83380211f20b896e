using NbdAttachment.Client;
using NbdAttachment.Testing;
using NbdAttachment.Virtualization;
using static NbdAttachment.Tests.Engine.CommandTests;

namespace NbdAttachment.Tests.Attachments;

public sealed class AttachmentTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static readonly NbdAttachmentOptions Fast = new()
    {
        Reconnect = NbdReconnectPolicy.Default with { InitialDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromMilliseconds(100), MaxDuration = TimeSpan.FromSeconds(10) },
    };

    private sealed class RecordingDelegate : INetworkBlockDeviceStorageDeviceAttachmentDelegate
    {
        private int _connected;
        private int _errors;

        public int ConnectedCount => Volatile.Read(ref _connected);

        public int ErrorCount => Volatile.Read(ref _errors);

        public NbdAttachmentException? Error { get; private set; }

        public void AttachmentWasConnected(NetworkBlockDeviceStorageDeviceAttachment attachment) => Interlocked.Increment(ref _connected);

        public void DidEncounterError(NetworkBlockDeviceStorageDeviceAttachment attachment, NbdAttachmentException error)
        {
            Error = error;
            Interlocked.Increment(ref _errors);
        }
    }

    private static NetworkBlockDeviceStorageDeviceAttachment Attach(Uri uri, DiskSynchronizationMode mode = DiskSynchronizationMode.Full, bool readOnly = false, NbdAttachmentOptions? options = null) =>
        new(uri, TimeSpan.FromSeconds(5), readOnly, mode, options ?? Fast);

    private static async Task<(VirtualMachine Vm, IBlockDevice Device)> StartVmAsync(StorageDeviceAttachment attachment)
    {
        var vm = new VirtualMachine(new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) } });
        await vm.StartAsync().WaitAsync(Bound);
        return (vm, vm.BlockDevices[0]);
    }

    [Fact]
    public void Convenience_constructor_has_documented_defaults()
    {
        var attachment = new NetworkBlockDeviceStorageDeviceAttachment(new Uri("nbd://example.invalid/disk"));
        attachment.Timeout.Should().Be(TimeSpan.FromSeconds(5));
        attachment.IsForcedReadOnly.Should().BeFalse();
        attachment.SynchronizationMode.Should().Be(DiskSynchronizationMode.Full);
        attachment.State.Should().Be(NbdAttachmentState.Created);
        attachment.ExportInfo.Should().BeNull();
        attachment.LastError.Should().BeNull();
        ((int)DiskSynchronizationMode.Full).Should().Be(0);
        ((int)DiskSynchronizationMode.None).Should().Be(1);
        ((int)NbdAttachmentErrorCode.NegotiationFailed).Should().Be(20001);
        ((int)NbdAttachmentErrorCode.Disconnected).Should().Be(20002);
    }

    [Fact]
    public async Task Construction_is_lazy_and_start_connects_once()
    {
        await using var server = await NbdTestServer.StartAsync();
        var attachment = Attach(server.Uri);
        var configuration = new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) { BlockDeviceIdentifier = "disk0" } } };
        configuration.Validate();
        await using var vm = new VirtualMachine(configuration);
        await Task.Delay(100);
        server.Statistics.ConnectionsAccepted.Should().Be(0);
        attachment.State.Should().Be(NbdAttachmentState.Created);

        await vm.StartAsync().WaitAsync(Bound);
        server.Statistics.ConnectionsAccepted.Should().Be(1);
        attachment.State.Should().Be(NbdAttachmentState.Connected);
        attachment.ExportInfo!.Size.Should().Be(NbdTestExportOptions.DefaultSize);
        vm.BlockDevices[0].Capacity.Should().Be(NbdTestExportOptions.DefaultSize);
        vm.BlockDevices[0].LogicalBlockSize.Should().Be(512);
    }

    [Theory]
    [InlineData("http://host/export")]
    [InlineData("nbd+unix:///export")]
    [InlineData("nbd://host/export?tls-verify-peer=maybe")]
    [InlineData("nbds+unix:///export")]
    public void Invalid_urls_are_rejected_synchronously(string url)
    {
        var uri = new Uri(url, UriKind.RelativeOrAbsolute);
        var construct = () => new NetworkBlockDeviceStorageDeviceAttachment(uri);
        construct.Should().Throw<NbdUriFormatException>();
        var validate = () => NetworkBlockDeviceStorageDeviceAttachment.Validate(uri);
        validate.Should().Throw<NbdUriFormatException>();
        NetworkBlockDeviceStorageDeviceAttachment.TryValidate(uri, out var error).Should().BeFalse();
        error.Should().NotBeNullOrEmpty();
    }

    [Fact]
    public void Valid_urls_and_bad_arguments()
    {
        NetworkBlockDeviceStorageDeviceAttachment.TryValidate(new Uri("nbd://localhost:10809/disk"), out var error).Should().BeTrue();
        error.Should().BeNull();
        NetworkBlockDeviceStorageDeviceAttachment.TryValidate(null, out error).Should().BeFalse();
        NetworkBlockDeviceStorageDeviceAttachment.Validate(new Uri("nbd+unix:///disk?socket=/tmp/nbd.sock"));
        var zero = () => new NetworkBlockDeviceStorageDeviceAttachment(new Uri("nbd://localhost/"), TimeSpan.Zero, false, DiskSynchronizationMode.Full);
        zero.Should().Throw<ArgumentOutOfRangeException>();
        var badOptions = () => new NetworkBlockDeviceStorageDeviceAttachment(new Uri("nbd://localhost/"), TimeSpan.FromSeconds(1), false, DiskSynchronizationMode.Full, new NbdAttachmentOptions { MaxInFlightRequests = 0 });
        badOptions.Should().Throw<ArgumentOutOfRangeException>();
        var badJournal = () => new NetworkBlockDeviceStorageDeviceAttachment(new Uri("nbd://localhost/"), TimeSpan.FromSeconds(1), false, DiskSynchronizationMode.Full, new NbdAttachmentOptions { WriteJournalCapacity = -1 });
        badJournal.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*WriteJournalCapacity*");
        var badConnections = () => new NetworkBlockDeviceStorageDeviceAttachment(new Uri("nbd://localhost/"), TimeSpan.FromSeconds(1), false, DiskSynchronizationMode.Full, new NbdAttachmentOptions { Connections = 0 });
        badConnections.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*Connections*");
    }

    [Fact]
    public async Task Delegate_and_events_fire_on_connect_and_on_every_reconnect()
    {
        await using var server = await NbdTestServer.StartAsync();
        var attachment = Attach(server.Uri);
        var recorder = new RecordingDelegate();
        attachment.Delegate = recorder;
        var connectedEvents = 0;
        var states = new List<NbdAttachmentState>();
        attachment.Connected += (_, _) => Interlocked.Increment(ref connectedEvents);
        attachment.StateChanged += (_, e) => { lock (states) { states.Add(e.Current); } };
        var (vm, device) = await StartVmAsync(attachment);
        await using (vm)
        {
            await WaitFor(() => recorder.ConnectedCount == 1 && Volatile.Read(ref connectedEvents) == 1);

            server.Faults.DropConnectionAfterRequests(1);
            await device.WriteAsync(0, new byte[] { 1, 2, 3 }).AsTask().WaitAsync(Bound);
            await WaitFor(() => recorder.ConnectedCount == 2 && Volatile.Read(ref connectedEvents) == 2);
            attachment.ReconnectCount.Should().Be(1);
            attachment.State.Should().Be(NbdAttachmentState.Connected);
            lock (states)
            {
                states.Should().Equal(NbdAttachmentState.Connecting, NbdAttachmentState.Connected, NbdAttachmentState.Reconnecting, NbdAttachmentState.Connected);
            }

            recorder.ErrorCount.Should().Be(0);
        }
    }

    [Fact]
    public async Task Drop_mid_write_with_64_in_flight_completes_and_reads_back()
    {
        await using var server = await NbdTestServer.StartAsync();
        var attachment = Attach(server.Uri);
        var (vm, device) = await StartVmAsync(attachment);
        await using (vm)
        {
            server.Faults.DelayReplies(TimeSpan.FromMilliseconds(1), 40);
            server.Faults.DropConnectionAfterRequests(30);
            var writes = Enumerable.Range(0, 64).Select(i => device.WriteAsync(i * 16384L, Pattern(16384, i), forceUnitAccess: i % 8 == 0).AsTask()).ToArray();
            await Task.WhenAll(writes).WaitAsync(Bound);
            attachment.ReconnectCount.Should().BeGreaterThanOrEqualTo(1);
            var back = new byte[16384];
            for (var i = 0; i < 64; i++)
            {
                await device.ReadAsync(i * 16384L, back).AsTask().WaitAsync(Bound);
                back.Should().Equal(Pattern(16384, i), $"block {i} was acknowledged");
            }
        }
    }

    [Fact]
    public async Task Server_refusing_forever_fails_once_with_20002()
    {
        await using var server = await NbdTestServer.StartAsync();
        var options = Fast with { Reconnect = Fast.Reconnect with { MaxAttempts = 3 } };
        var attachment = Attach(server.Uri, options: options);
        var recorder = new RecordingDelegate();
        attachment.Delegate = recorder;
        var errorEvents = 0;
        attachment.ErrorEncountered += (_, e) => { Interlocked.Increment(ref errorEvents); e.Error.Code.Should().Be(NbdAttachmentErrorCode.Disconnected); };
        var (vm, device) = await StartVmAsync(attachment);
        await using (vm)
        {
            server.Faults.RefuseNextConnections(int.MaxValue);
            server.Faults.DropConnectionAfterRequests(1);
            var started = DateTime.UtcNow;
            var act = async () => await device.WriteAsync(0, new byte[] { 1 });
            await act.Should().ThrowAsync<NbdException>().WaitAsync(Bound);
            (DateTime.UtcNow - started).Should().BeLessThan(TimeSpan.FromSeconds(10));
            await WaitFor(() => recorder.ErrorCount == 1 && Volatile.Read(ref errorEvents) == 1);
            attachment.State.Should().Be(NbdAttachmentState.Failed);
            recorder.Error!.Code.Should().Be(NbdAttachmentErrorCode.Disconnected);
            recorder.Error.InnerException.Should().NotBeNull();
            attachment.LastError.Should().BeSameAs(recorder.Error);
            var again = async () => await device.ReadAsync(0, new byte[1]);
            await again.Should().ThrowAsync<NbdException>().WaitAsync(Bound);
            await Task.Delay(200);
            recorder.ErrorCount.Should().Be(1);
        }
    }

    [Fact]
    public async Task Unknown_export_at_start_fails_with_20001_and_vm_is_in_error()
    {
        await using var server = await NbdTestServer.StartAsync();
        var attachment = Attach(server.GetUri("no-such-export"));
        var recorder = new RecordingDelegate();
        attachment.Delegate = recorder;
        var vm = new VirtualMachine(new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) } });
        var act = () => vm.StartAsync();
        var error = (await act.Should().ThrowAsync<NbdAttachmentException>().WaitAsync(Bound)).Which;
        error.Code.Should().Be(NbdAttachmentErrorCode.NegotiationFailed);
        error.InnerException.Should().BeOfType<NbdNegotiationException>();
        vm.State.Should().Be(VirtualMachineState.Error);
        attachment.State.Should().Be(NbdAttachmentState.Failed);
        await WaitFor(() => recorder.ErrorCount == 1);
        server.Statistics.ConnectionsAccepted.Should().Be(1, "negotiation errors are not retried");
    }

    [Fact]
    public async Task Server_down_at_start_is_retried_then_fails_with_20002()
    {
        var port = 0;
        await using (var probe = await NbdTestServer.StartAsync())
        {
            port = probe.Port;
        }

        var options = Fast with { Reconnect = Fast.Reconnect with { MaxAttempts = 2 } };
        var attachment = Attach(new Uri($"nbd://127.0.0.1:{port}/"), options: options);
        var vm = new VirtualMachine(new VirtualMachineConfiguration { StorageDevices = { new UsbMassStorageDeviceConfiguration(attachment) } });
        var act = () => vm.StartAsync();
        var error = (await act.Should().ThrowAsync<NbdAttachmentException>().WaitAsync(Bound)).Which;
        error.Code.Should().Be(NbdAttachmentErrorCode.Disconnected);
        attachment.State.Should().Be(NbdAttachmentState.Failed);
    }

    [Fact]
    public async Task Server_refusing_briefly_at_start_is_retried()
    {
        await using var server = await NbdTestServer.StartAsync();
        server.Faults.RefuseNextConnections(2);
        var attachment = Attach(server.Uri);
        var (vm, _) = await StartVmAsync(attachment);
        await using (vm)
        {
            attachment.State.Should().Be(NbdAttachmentState.Connected);
            server.Statistics.ConnectionsRefused.Should().Be(2);
        }
    }

    [Theory]
    [InlineData(DiskSynchronizationMode.Full, 1, 1)]
    [InlineData(DiskSynchronizationMode.None, 0, 0)]
    public async Task Synchronization_mode_controls_flush_and_fua(DiskSynchronizationMode mode, int flushes, int fuaWrites)
    {
        await using var server = await NbdTestServer.StartAsync();
        var (vm, device) = await StartVmAsync(Attach(server.Uri, mode));
        await using (vm)
        {
            await device.WriteAsync(0, new byte[4096]);
            await device.WriteAsync(4096, new byte[4096], forceUnitAccess: true);
            await device.FlushAsync();
        }

        server.Statistics.Flushes.Should().Be(flushes);
        server.Statistics.FuaWrites.Should().Be(fuaWrites);
        server.Statistics.Writes.Should().Be(2);
    }

    [Fact]
    public async Task Forced_read_only_rejects_writes_without_reaching_the_server()
    {
        await using var server = await NbdTestServer.StartAsync();
        server.GetExport().WriteBytes(0, new byte[] { 9, 8, 7 });
        var (vm, device) = await StartVmAsync(Attach(server.Uri, readOnly: true));
        await using (vm)
        {
            device.IsReadOnly.Should().BeTrue();
            var write = async () => await device.WriteAsync(0, new byte[] { 1 });
            (await write.Should().ThrowAsync<NbdRequestRejectedException>()).Which.Reason.Should().Be(NbdRequestRejectReason.ReadOnly);
            var discard = async () => await device.DiscardAsync(0, 4096);
            await discard.Should().ThrowAsync<NbdRequestRejectedException>();
            var zero = async () => await device.WriteZeroesAsync(0, 4096);
            await zero.Should().ThrowAsync<NbdRequestRejectedException>();
            var back = new byte[3];
            await device.ReadAsync(0, back);
            back.Should().Equal(9, 8, 7);
        }

        server.Statistics.Writes.Should().Be(0);
        server.Statistics.Trims.Should().Be(0);
        server.Statistics.WriteZeroes.Should().Be(0);
    }

    [Fact]
    public async Task Read_only_export_is_read_only_device()
    {
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { ReadOnly = true, Size = 1 << 20 }] });
        var (vm, device) = await StartVmAsync(Attach(server.Uri));
        await using (vm)
        {
            device.IsReadOnly.Should().BeTrue();
            var write = async () => await device.WriteAsync(0, new byte[] { 1 });
            await write.Should().ThrowAsync<NbdRequestRejectedException>();
        }

        server.Statistics.Writes.Should().Be(0);
    }

    [Fact]
    public async Task Vm_end_to_end_io_and_stop_disconnects()
    {
        await using var server = await NbdTestServer.StartAsync();
        var first = Attach(server.Uri);
        var second = Attach(server.Uri, DiskSynchronizationMode.None);
        var configuration = new VirtualMachineConfiguration
        {
            StorageDevices = { new VirtioBlockDeviceConfiguration(first) { BlockDeviceIdentifier = "root" }, new NvmeControllerDeviceConfiguration(second) },
        };
        var vm = new VirtualMachine(configuration);
        vm.State.Should().Be(VirtualMachineState.Stopped);
        vm.BlockDevices.Should().BeEmpty();
        await vm.StartAsync().WaitAsync(Bound);
        vm.State.Should().Be(VirtualMachineState.Running);
        vm.BlockDevices.Should().HaveCount(2);
        var device = vm.BlockDevices[0];
        var data = Pattern(1 << 20, 42);
        await device.WriteAsync(1 << 20, data, forceUnitAccess: true);
        await device.FlushAsync();
        var back = new byte[data.Length];
        await vm.BlockDevices[1].ReadAsync(1 << 20, back);
        back.Should().Equal(data);
        await device.WriteZeroesAsync(1 << 20, 4096);
        await device.DiscardAsync(2 << 20, 1 << 20);
        server.GetExport().ReadBytes(1 << 20, 4096).Should().OnlyContain(b => b == 0);

        var inflight = Enumerable.Range(0, 32).Select(i => device.WriteAsync(i * 4096L, Pattern(4096, i)).AsTask()).ToArray();
        await vm.StopAsync().WaitAsync(Bound);
        await Task.WhenAll(inflight).WaitAsync(Bound);
        vm.State.Should().Be(VirtualMachineState.Stopped);
        vm.BlockDevices.Should().BeEmpty();
        first.State.Should().Be(NbdAttachmentState.Closed);
        await WaitFor(() => server.Statistics.Disconnects == 2);
        server.GetExport().ReadBytes(31 * 4096, 4096).Should().Equal(Pattern(4096, 31));
    }

    [Fact]
    public async Task Vm_start_failure_closes_the_attachments_that_opened()
    {
        await using var server = await NbdTestServer.StartAsync();
        var good = Attach(server.Uri);
        var bad = Attach(server.GetUri("missing"));
        var vm = new VirtualMachine(new VirtualMachineConfiguration
        {
            StorageDevices = { new VirtioBlockDeviceConfiguration(good), new VirtioBlockDeviceConfiguration(bad) },
        });
        var act = () => vm.StartAsync();
        await act.Should().ThrowAsync<NbdAttachmentException>().WaitAsync(Bound);
        vm.State.Should().Be(VirtualMachineState.Error);
        vm.BlockDevices.Should().BeEmpty();
        good.State.Should().Be(NbdAttachmentState.Closed);
        await WaitFor(() => server.ActiveConnections == 0);
    }

    [Fact]
    public async Task Write_zeroes_and_discard_fall_back_when_the_server_lacks_them()
    {
        // HAS_FLAGS | SEND_FLUSH only: no FUA, TRIM or WRITE_ZEROES.
        var export = new NbdTestExportOptions { Size = 8 << 20, TransmissionFlagsOverride = 0x0001 | 0x0004 };
        await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [export] });
        server.GetExport().WriteBytes(0, Pattern(3 << 20, 5));
        var (vm, device) = await StartVmAsync(Attach(server.Uri));
        await using (vm)
        {
            await device.WriteZeroesAsync(1000, (2 << 20) + 5);
            await device.DiscardAsync(0, 1 << 20);
            await device.WriteAsync(0, new byte[] { 1 }, forceUnitAccess: true);
        }

        server.GetExport().ReadBytes(1000, (2 << 20) + 5).Should().OnlyContain(b => b == 0);
        server.GetExport().ReadBytes(999, 1).Should().Equal(Pattern(3 << 20, 5)[999]);
        server.Statistics.WriteZeroes.Should().Be(0);
        server.Statistics.Trims.Should().Be(0);
        server.Statistics.FuaWrites.Should().Be(0);
        server.Statistics.Flushes.Should().Be(1, "a FUA write without SEND_FUA becomes write + flush");
    }
}
