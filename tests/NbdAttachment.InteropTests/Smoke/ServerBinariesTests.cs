using NbdAttachment.InteropTests.Servers;

namespace NbdAttachment.InteropTests.Smoke;

public sealed class ServerBinariesTests
{
    private const string Missing = "nbd-attachment-no-such-program";

    [Fact]
    public void Missing_program_skips_unless_interop_is_required()
    {
        ServerBinaries.TryFind(Missing).Should().BeNull();

        FluentActions.Invoking(() => ServerBinaries.RequireOrSkip(Missing, required: false))
            .Should().Throw<SkipException>().WithMessage($"*{Missing}*");
        FluentActions.Invoking(() => ServerBinaries.RequireOrSkip(Missing, required: true))
            .Should().Throw<InvalidOperationException>().WithMessage($"*{Missing}*NBD_INTEROP_REQUIRED=1*");
    }

    [Fact]
    public void Present_program_is_found_with_its_full_path()
    {
        ServerBinaries.TryFind("sh").Should().NotBeNull().And.StartWith("/");
    }
}
