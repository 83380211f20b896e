using NbdAttachment.Virtualization;

namespace NbdAttachment.Tests.Attachments;

public sealed class VirtualMachineConfigurationTests
{
    private static NetworkBlockDeviceStorageDeviceAttachment Nbd() => new(new Uri("nbd://localhost/disk"));

    [Theory]
    [InlineData("")]
    [InlineData("disk0")]
    [InlineData("12345678901234567890")]
    [InlineData(" ~!@#$%^&*()_+-=[]{}")]
    public void Valid_identifiers_are_accepted(string id)
    {
        VirtioBlockDeviceConfiguration.ValidateBlockDeviceIdentifier(id);
        new VirtioBlockDeviceConfiguration(Nbd()) { BlockDeviceIdentifier = id }.BlockDeviceIdentifier.Should().Be(id);
    }

    [Theory]
    [InlineData("123456789012345678901", "at most 20")]
    [InlineData("disk\u00e9", "printable ASCII")]
    [InlineData("tab\there", "printable ASCII")]
    [InlineData("del\u007f", "printable ASCII")]
    [InlineData("\U0001F600", "printable ASCII")]
    public void Invalid_identifiers_throw_a_clear_argument_exception(string id, string reason)
    {
        var validate = () => VirtioBlockDeviceConfiguration.ValidateBlockDeviceIdentifier(id);
        validate.Should().Throw<ArgumentException>().WithMessage($"*{reason}*");
        var config = new VirtioBlockDeviceConfiguration(Nbd());
        var set = () => config.BlockDeviceIdentifier = id;
        set.Should().Throw<ArgumentException>();
        config.BlockDeviceIdentifier.Should().BeEmpty();
    }

    [Fact]
    public void Null_identifier_throws()
    {
        var validate = () => VirtioBlockDeviceConfiguration.ValidateBlockDeviceIdentifier(null!);
        validate.Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public void Configuration_validation()
    {
        var empty = new VirtualMachineConfiguration();
        empty.Invoking(c => c.Validate()).Should().Throw<InvalidOperationException>().WithMessage("*at least one*");

        var shared = Nbd();
        var twice = new VirtualMachineConfiguration { StorageDevices = { new VirtioBlockDeviceConfiguration(shared), new UsbMassStorageDeviceConfiguration(shared) } };
        twice.Invoking(c => c.Validate()).Should().Throw<InvalidOperationException>().WithMessage("*attachment*");

        var sameId = new VirtualMachineConfiguration
        {
            StorageDevices =
            {
                new VirtioBlockDeviceConfiguration(Nbd()) { BlockDeviceIdentifier = "a" },
                new VirtioBlockDeviceConfiguration(Nbd()) { BlockDeviceIdentifier = "a" },
            },
        };
        sameId.Invoking(c => c.Validate()).Should().Throw<InvalidOperationException>().WithMessage("*unique*");

        var ok = new VirtualMachineConfiguration
        {
            StorageDevices =
            {
                new VirtioBlockDeviceConfiguration(Nbd()) { BlockDeviceIdentifier = "a" },
                new VirtioBlockDeviceConfiguration(Nbd()),
                new VirtioBlockDeviceConfiguration(Nbd()),
                new NvmeControllerDeviceConfiguration(Nbd()),
            },
        };
        ok.Validate();
    }

    [Fact]
    public async Task Invalid_configuration_fails_start_without_io()
    {
        var vm = new VirtualMachine(new VirtualMachineConfiguration());
        var act = () => vm.StartAsync();
        await act.Should().ThrowAsync<InvalidOperationException>().WaitAsync(TimeSpan.FromSeconds(10));
        vm.State.Should().Be(VirtualMachineState.Stopped);
    }
}
