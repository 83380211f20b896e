// NbdCopy: copy between an NBD export and a local file (either direction) or between two exports,
// with parallel workers and sparse awareness (zero ranges are not sent as data).
// Usage: dotnet run --project samples/NbdCopy -- SOURCE DEST [--connections N] [--no-sparse]
// SOURCE and DEST are NBD URLs (nbd://host/export, nbd+unix:///export?socket=PATH, ...) or file paths.
// Without arguments it demonstrates itself: file -> NBD -> NBD -> file against an in-process server, then verifies the result.
using System.Diagnostics;
using NbdAttachment;
using NbdAttachment.Samples.NbdCopy;
using NbdAttachment.Testing;

var positional = new List<string>();
var connections = 4;
var sparse = true;
for (var i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--connections" or "-C":
            if (i + 1 >= args.Length || !int.TryParse(args[++i], out connections) || connections is < 1 or > 64)
            {
                Console.Error.WriteLine("nbdcopy: --connections needs a number from 1 to 64");
                return 1;
            }

            break;
        case "--no-sparse":
            sparse = false;
            break;
        case "-h" or "--help":
            Console.WriteLine("Usage: NbdCopy SOURCE DEST [--connections N] [--no-sparse]");
            Console.WriteLine("  SOURCE, DEST    an NBD URL or a file path (a file destination is created or truncated)");
            Console.WriteLine("  --connections N workers (default 4); NBD connections per export when it allows multi-conn, else requests in flight on one");
            Console.WriteLine("  --no-sparse     copy every byte, even ranges that read as zeroes");
            Console.WriteLine("With no arguments: a self-demo against an in-process NBD server.");
            return 0;
        default:
            if (args[i].StartsWith("--", StringComparison.Ordinal))
            {
                Console.Error.WriteLine($"nbdcopy: unknown option '{args[i]}' (try --help)");
                return 1;
            }

            positional.Add(args[i]);
            break;
    }
}

try
{
    if (positional.Count == 0)
    {
        return await DemoAsync(connections, sparse);
    }

    if (positional.Count != 2)
    {
        Console.Error.WriteLine("nbdcopy: expected SOURCE and DEST (try --help)");
        return 1;
    }

    var summary = await CopyAsync(positional[0], positional[1], connections, sparse, CancellationToken.None);
    Console.WriteLine(summary);
    return 0;
}
catch (Exception ex) when (ex is NbdException or IOException or UnauthorizedAccessException or InvalidOperationException or OperationCanceledException)
{
    Console.Error.WriteLine($"nbdcopy: {ex.GetType().Name}: {ex.Message}");
    return 1;
}

static async Task<CopySummary> CopyAsync(string source, string destination, int connections, bool sparse, CancellationToken cancellationToken)
{
    await using Endpoint from = Endpoint.IsNbdUrl(source)
        ? await NbdEndpoint.OpenAsync(source, connections, cancellationToken)
        : FileEndpoint.OpenRead(source);
    Endpoint to;
    if (Endpoint.IsNbdUrl(destination))
    {
        var nbd = await NbdEndpoint.OpenAsync(destination, connections, cancellationToken);
        to = nbd;
        if (nbd.Export.IsReadOnly)
        {
            await nbd.DisposeAsync();
            throw new InvalidOperationException($"the destination {destination} is read-only");
        }

        if (nbd.Size < from.Size)
        {
            await nbd.DisposeAsync();
            throw new InvalidOperationException($"the destination ({nbd.Size:N0} bytes) is smaller than the source ({from.Size:N0} bytes)");
        }
    }
    else
    {
        to = FileEndpoint.Create(destination, from.Size, sparse);
    }

    await using (to)
    {
        var describe = (Endpoint e) => e is NbdEndpoint n ? $"{n.Name} ({n.Connections} connection{(n.Connections == 1 ? string.Empty : "s")})" : e.Name;
        Console.WriteLine($"copying {from.Size:N0} bytes: {describe(from)} -> {describe(to)}, {connections} worker{(connections == 1 ? string.Empty : "s")}{(sparse ? ", sparse" : string.Empty)}");
        var copier = new Copier(from, to, connections, sparse);
        var run = copier.RunAsync(cancellationToken);
        if (!Console.IsOutputRedirected)
        {
            await ShowProgressAsync(run, copier, from.Size);
        }

        return await run;
    }
}

static async Task ShowProgressAsync(Task run, Copier copier, long total)
{
    var stopwatch = Stopwatch.StartNew();
    const int width = 40;
    while (true)
    {
        var finished = await Task.WhenAny(run, Task.Delay(100)) == run;
        var done = finished && run.IsCompletedSuccessfully ? total : copier.Done;
        var fraction = total == 0 ? 1.0 : Math.Clamp((double)done / total, 0, 1);
        var filled = (int)(fraction * width);
        var rate = stopwatch.Elapsed.TotalSeconds > 0 ? done / (1024.0 * 1024.0) / stopwatch.Elapsed.TotalSeconds : 0;
        Console.Write($"\r[{new string('#', filled)}{new string('.', width - filled)}] {fraction * 100,5:0.0}%  {rate,8:0.0} MiB/s ");
        if (finished)
        {
            Console.WriteLine();
            return;
        }
    }
}

static async Task<int> DemoAsync(int connections, bool sparse)
{
    const long size = 24L * 1024 * 1024 + 4096 * 3;
    Console.WriteLine("No arguments: self-demo. Starting an in-process NBD server ...");
    await using var server = await NbdTestServer.StartAsync(new NbdTestServerOptions
    {
        Exports =
        [
            new NbdTestExportOptions("disk", size) { MultiConn = true, Description = "NbdCopy demo" },
            new NbdTestExportOptions("backup", size) { Description = "NbdCopy demo: NBD to NBD target" },
        ],
    });
    var url = server.GetUri("disk").ToString();
    var backup = server.GetUri("backup").ToString();
    var original = Path.Combine(Path.GetTempPath(), $"nbdcopy-demo-{Environment.ProcessId}-in.img");
    var copy = Path.Combine(Path.GetTempPath(), $"nbdcopy-demo-{Environment.ProcessId}-out.img");
    try
    {
        // A file with a few data regions and large zero gaps.
        await using (var file = new FileStream(original, FileMode.Create, FileAccess.Write))
        {
            file.SetLength(size);
            var random = new Random(7);
            foreach (var (offset, length) in new (long, int)[] { (0, 300_000), (5L << 20, 2 << 20), (17L << 20, 123_457), (size - 5000, 5000) })
            {
                var data = new byte[length];
                random.NextBytes(data);
                file.Position = offset;
                await file.WriteAsync(data);
            }
        }

        Console.WriteLine($"file -> NBD: {original} -> {url}");
        var upload = await CopyAsync(original, url, connections, sparse, CancellationToken.None);
        Console.WriteLine($"  {upload}");
        Console.WriteLine($"NBD -> NBD: {url} -> {backup}");
        var transfer = await CopyAsync(url, backup, connections, sparse, CancellationToken.None);
        Console.WriteLine($"  {transfer}");
        Console.WriteLine($"NBD -> file: {backup} -> {copy}");
        var download = await CopyAsync(backup, copy, connections, sparse, CancellationToken.None);
        Console.WriteLine($"  {download}");

        var same = await SameContentAsync(original, copy);
        Console.WriteLine($"verify: {(same ? "the copy is identical to the original" : "MISMATCH")}; server saw {server.Statistics.Writes} writes, {server.Statistics.WriteZeroes} write-zeroes, {server.Statistics.Reads} reads, {server.Statistics.BlockStatus} block-status requests on {server.Statistics.ConnectionsAccepted} connections");
        return same ? 0 : 1;
    }
    finally
    {
        File.Delete(original);
        File.Delete(copy);
    }
}

static async Task<bool> SameContentAsync(string left, string right)
{
    await using var a = File.OpenRead(left);
    await using var b = File.OpenRead(right);
    if (a.Length != b.Length)
    {
        return false;
    }

    var x = new byte[1 << 20];
    var y = new byte[1 << 20];
    while (true)
    {
        var read = await a.ReadAtLeastAsync(x, x.Length, throwOnEndOfStream: false);
        await b.ReadExactlyAsync(y.AsMemory(0, read));
        if (!x.AsSpan(0, read).SequenceEqual(y.AsSpan(0, read)))
        {
            return false;
        }

        if (read < x.Length)
        {
            return true;
        }
    }
}
