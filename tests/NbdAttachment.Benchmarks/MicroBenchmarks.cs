using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;

namespace NbdAttachment.Benchmarks;

/// <summary>
/// Entry point of <c>micro</c> mode: BenchmarkDotNet micro-benchmarks for the codec and single-request round trips.
/// <c>dotnet run -c Release --project tests/NbdAttachment.Benchmarks -- micro [BenchmarkDotNet args, e.g. --filter *]</c>.
/// </summary>
internal static class MicroBenchmarks
{
    /// <summary>
    /// Short job so the whole suite fits in a few minutes on 2 cores. Marked as default, so a <c>--job</c> given on the
    /// command line replaces it.
    /// </summary>
    public static Job MicroJob { get; } = Job.Default
        .WithLaunchCount(1)
        .WithWarmupCount(3)
        .WithIterationCount(5)
        .WithId("Micro")
        .AsDefault();

    public static void Run(string[] args)
    {
        var types = new List<Type> { typeof(CodecBenchmarks), typeof(InProcessServerRoundTripBenchmarks) };
        if (NbdkitRoundTripBenchmarks.IsNbdkitAvailable())
        {
            types.Add(typeof(NbdkitRoundTripBenchmarks));
        }
        else
        {
            Console.WriteLine("nbdkit not found on PATH: skipping NbdkitRoundTripBenchmarks.");
        }

        var config = DefaultConfig.Instance.AddJob(MicroJob);
        BenchmarkSwitcher.FromTypes([.. types]).Run(args, config);
    }
}
