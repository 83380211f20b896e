using NbdAttachment.Virtualization;
using static NbdAttachment.Tests.Engine.CommandTests;

namespace NbdAttachment.Tests.Attachments;

public sealed class DiskImageAttachmentTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Round_trip_through_a_temp_file()
    {
        var path = Path.GetTempFileName();
        try
        {
            await File.WriteAllBytesAsync(path, new byte[4 << 20]);
            var attachment = new DiskImageStorageDeviceAttachment(path, readOnly: false);
            var vm = new VirtualMachine(new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) } });
            await vm.StartAsync().WaitAsync(Bound);
            var device = vm.BlockDevices[0];
            device.Capacity.Should().Be(4 << 20);
            device.LogicalBlockSize.Should().Be(512);
            device.IsReadOnly.Should().BeFalse();
            var data = Pattern(1 << 20, 7);
            await device.WriteAsync(512, data, forceUnitAccess: true).AsTask().WaitAsync(Bound);
            await device.FlushAsync();
            var back = new byte[data.Length];
            await device.ReadAsync(512, back);
            back.Should().Equal(data);
            await device.WriteZeroesAsync(512, 1024);
            await device.DiscardAsync(0, 4096);
            var beyond = async () => await device.ReadAsync(4 << 20, new byte[1]);
            await beyond.Should().ThrowAsync<NbdRequestRejectedException>();
            await vm.StopAsync().WaitAsync(Bound);

            var onDisk = await File.ReadAllBytesAsync(path);
            onDisk.AsSpan(512, 1024).ToArray().Should().OnlyContain(b => b == 0);
            onDisk.AsSpan(1536, data.Length - 1024).ToArray().Should().Equal(data.AsSpan(1024).ToArray());

            var readOnly = new DiskImageStorageDeviceAttachment(path, readOnly: true, DiskSynchronizationMode.None);
            var vm2 = new VirtualMachine(new VirtualMachineConfiguration { StorageDevices = { new UsbMassStorageDeviceConfiguration(readOnly) } });
            await vm2.StartAsync().WaitAsync(Bound);
            vm2.BlockDevices[0].IsReadOnly.Should().BeTrue();
            var write = async () => await vm2.BlockDevices[0].WriteAsync(0, new byte[1]);
            await write.Should().ThrowAsync<NbdRequestRejectedException>();
            await vm2.DisposeAsync();
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Missing_file_fails_start()
    {
        var attachment = new DiskImageStorageDeviceAttachment(Path.Combine(Path.GetTempPath(), Guid.NewGuid().ToString("N")), readOnly: true);
        var vm = new VirtualMachine(new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) } });
        var act = () => vm.StartAsync();
        await act.Should().ThrowAsync<FileNotFoundException>().WaitAsync(Bound);
        vm.State.Should().Be(VirtualMachineState.Error);
    }
}
