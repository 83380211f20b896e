using System.Buffers.Binary;
using System.Net.Sockets;
using NbdAttachment.VhostUser;
using NbdAttachment.Virtualization;

namespace NbdAttachment.Tests.VhostUser;

/// <summary>The host API around the backend: options, the VM wrapper's checks, the socket's life cycle.</summary>
public sealed class VhostUserHostTests : IDisposable
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);
    private readonly string _directory = Directory.CreateTempSubdirectory("vhost-host-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Theory]
    [InlineData(0, 126, 1 << 20)]
    [InlineData(65, 126, 1 << 20)]
    [InlineData(1, 0, 1 << 20)]
    [InlineData(1, 1025, 1 << 20)]
    [InlineData(1, 126, 4095)]
    [InlineData(1, 126, (16 << 20) + 1)]
    public void Options_out_of_range_are_refused(int queues, int segments, int segmentSize)
    {
        var options = VhostUserBlockBackendOptions.Default with { QueueCount = queues, MaxSegments = segments, MaxSegmentSize = segmentSize };
        options.Invoking(o => o.Validate()).Should().Throw<ArgumentException>();
    }

    [Fact]
    public void An_identifier_that_is_not_printable_ascii_or_too_long_is_refused()
    {
        (VhostUserBlockBackendOptions.Default with { DeviceIdentifier = new string('x', 21) }).Invoking(o => o.Validate()).Should().Throw<ArgumentException>();
        (VhostUserBlockBackendOptions.Default with { DeviceIdentifier = "tab\there" }).Invoking(o => o.Validate()).Should().Throw<ArgumentException>();
        VhostUserBlockBackendOptions.Default.Validate();
    }

    [Fact]
    public async Task A_device_that_is_not_virtio_blk_is_refused_before_anything_opens()
    {
        var image = NewImage(1 << 20);
        var configuration = new VirtualMachineConfiguration { StorageDevices = { new UsbMassStorageDeviceConfiguration(new DiskImageStorageDeviceAttachment(image, readOnly: false)) } };
        await using var vm = new VhostUserVirtualMachine(configuration, [SocketPath("a")]);
        var start = () => vm.StartAsync();
        (await start.Should().ThrowAsync<InvalidOperationException>()).WithMessage("*virtio block*");
        vm.Machine.State.Should().Be(VirtualMachineState.Stopped);
        vm.Backends.Should().BeEmpty();
    }

    [Fact]
    public async Task One_socket_path_is_needed_per_device()
    {
        var configuration = new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(new DiskImageStorageDeviceAttachment(NewImage(1 << 20), readOnly: false)) } };
        await using var vm = new VhostUserVirtualMachine(configuration, [SocketPath("a"), SocketPath("b")]);
        var start = () => vm.StartAsync();
        (await start.Should().ThrowAsync<InvalidOperationException>()).WithMessage("*socket paths*");
    }

    [Fact]
    public async Task Start_listens_stop_removes_the_socket_and_the_machine_starts_again()
    {
        var path = SocketPath("vm");
        File.WriteAllText(path, "stale"); // a stale file at the path is replaced
        var configuration = new VirtualMachineConfiguration
        {
            StorageDevices = { new VirtioBlockDeviceConfiguration(new DiskImageStorageDeviceAttachment(NewImage(4 << 20), readOnly: false)) { BlockDeviceIdentifier = "disk-7" } },
        };
        await using var vm = new VhostUserVirtualMachine(configuration, [path]);
        for (var round = 0; round < 2; round++)
        {
            await vm.StartAsync();
            vm.Machine.State.Should().Be(VirtualMachineState.Running);
            vm.Backends.Should().ContainSingle().Which.Options.DeviceIdentifier.Should().Be("disk-7");
            using (var socket = await ConnectAsync(path))
            {
                (await ExchangeAsync(socket, request: 1)).Should().NotBe(0, "GET_FEATURES answers with the offered feature bits");
            }

            await vm.StopAsync();
            vm.Machine.State.Should().Be(VirtualMachineState.Stopped);
            File.Exists(path).Should().BeFalse();
        }
    }

    [Fact]
    public async Task A_second_front_end_is_refused_and_a_clean_close_reports_no_error()
    {
        var path = SocketPath("one");
        await using var device = await OpenImageAsync(1 << 20);
        await using var backend = new VhostUserBlockBackend(path, device);
        var connected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var ended = new TaskCompletionSource<VhostUserSessionEndedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        backend.FrontEndConnected += (_, _) => connected.TrySetResult();
        backend.FrontEndDisconnected += (_, e) => ended.TrySetResult(e);
        backend.Start();
        backend.Invoking(b => b.Start()).Should().Throw<InvalidOperationException>();

        using var first = await ConnectAsync(path);
        await connected.Task.WaitAsync(Bound);
        backend.IsConnected.Should().BeTrue();
        using (var second = await ConnectAsync(path))
        {
            var buffer = new byte[1];
            (await second.ReceiveAsync(buffer.AsMemory()).AsTask().WaitAsync(Bound)).Should().Be(0, "the backend closes a second front-end");
        }

        (await ExchangeAsync(first, request: 17)).Should().Be(8, "GET_QUEUE_NUM answers with QueueCount (default 8)");
        first.Shutdown(SocketShutdown.Both);
        var args = await ended.Task.WaitAsync(Bound);
        args.Error.Should().BeNull();
        await backend.StopAsync();
        backend.Invoking(b => b.Start()).Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public async Task Stop_before_start_is_a_no_op()
    {
        await using var device = await OpenImageAsync(1 << 20);
        var backend = new VhostUserBlockBackend(SocketPath("never"), device);
        await backend.StopAsync().WaitAsync(Bound);
        await backend.DisposeAsync();
    }

    private string SocketPath(string name) => Path.Combine(_directory, name + ".sock");

    private string NewImage(long size)
    {
        var path = Path.Combine(_directory, Guid.NewGuid().ToString("N") + ".img");
        using var file = File.Create(path);
        file.SetLength(size);
        return path;
    }

    private async Task<IBlockDevice> OpenImageAsync(long size)
    {
        var configuration = new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(new DiskImageStorageDeviceAttachment(NewImage(size), readOnly: false)) } };
        var vm = new VirtualMachine(configuration);
        await vm.StartAsync();
        return vm.BlockDevices[0];
    }

    private static async Task<Socket> ConnectAsync(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(path)).WaitAsync(Bound);
        return socket;
    }

    /// <summary>Sends a payload-less request and returns the u64 of its reply.</summary>
    private static async Task<ulong> ExchangeAsync(Socket socket, uint request)
    {
        var header = new byte[12];
        BinaryPrimitives.WriteUInt32LittleEndian(header, request);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), 1);
        await socket.SendAsync(header.AsMemory()).AsTask().WaitAsync(Bound);
        var reply = new byte[20];
        var got = 0;
        while (got < reply.Length)
        {
            var n = await socket.ReceiveAsync(reply.AsMemory(got)).AsTask().WaitAsync(Bound);
            n.Should().BePositive("the backend answers a GET request");
            got += n;
        }

        BinaryPrimitives.ReadUInt32LittleEndian(reply).Should().Be(request);
        (BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(4)) & 0x7).Should().Be(0x5, "version 1 with the reply flag");
        BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(8)).Should().Be(8);
        return BinaryPrimitives.ReadUInt64LittleEndian(reply.AsSpan(12));
    }
}
