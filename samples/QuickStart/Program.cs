// QuickStart: attach an NBD export to a (storage-only) virtual machine and drive guest-like I/O through it.
// Usage: dotnet run --project samples/QuickStart [nbd-url]
// Without a URL an in-process test server with a 64 MiB export is started.
using System.Diagnostics;
using NbdAttachment;
using NbdAttachment.Testing;
using NbdAttachment.Virtualization;

NbdTestServer? server = null;
try
{
    Uri url;
    if (args.Length > 0)
    {
        if (!NetworkBlockDeviceStorageDeviceAttachment.TryValidate(new Uri(args[0], UriKind.RelativeOrAbsolute), out var problem))
        {
            Console.Error.WriteLine($"Invalid NBD URL: {problem}");
            return 1;
        }

        url = new Uri(args[0], UriKind.RelativeOrAbsolute);
    }
    else
    {
        server = await NbdTestServer.StartAsync(new NbdTestServerOptions { Exports = [new NbdTestExportOptions { Size = 64L * 1024 * 1024 }] });
        url = server.Uri;
        Console.WriteLine($"Started an in-process NBD server: {url}");
    }

    // Give up on an unreachable server after about 5 seconds instead of the default minute.
    var options = NbdAttachmentOptions.Default with { Reconnect = NbdAttachment.Client.NbdReconnectPolicy.Default with { MaxDuration = TimeSpan.FromSeconds(5), MaxDelay = TimeSpan.FromSeconds(1) } };
    var attachment = new NetworkBlockDeviceStorageDeviceAttachment(url, TimeSpan.FromSeconds(5), forcedReadOnly: false, DiskSynchronizationMode.Full, options);
    attachment.StateChanged += (_, e) => Console.WriteLine($"  [event] state {e.Previous} -> {e.Current}{(e.Error is null ? string.Empty : $" ({e.Error.Message})")}");
    attachment.Connected += (_, _) => Console.WriteLine("  [event] attachment was connected");
    attachment.ErrorEncountered += (_, e) => Console.WriteLine($"  [event] error {(int)e.Error.Code}: {e.Error.Message}");

    var configuration = new VirtualMachineConfiguration
    {
        StorageDevices = { new VirtioBlockDeviceConfiguration(attachment) { BlockDeviceIdentifier = "quickstart-disk" } },
    };
    configuration.Validate();
    await using var vm = new VirtualMachine(configuration);

    Console.WriteLine($"Starting the virtual machine (attachment state: {attachment.State}) ...");
    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
    await vm.StartAsync(timeout.Token);
    var disk = vm.BlockDevices[0];
    var info = attachment.ExportInfo!;
    Console.WriteLine($"Running. Export: {info.Size / (1024 * 1024)} MiB, flags {info.Flags}, block sizes {info.MinimumBlockSize}/{info.PreferredBlockSize}/{info.MaximumPayloadSize}, read-only {disk.IsReadOnly}");

    if (disk.IsReadOnly)
    {
        Console.WriteLine("The disk is read-only; skipping the write test.");
        await vm.StopAsync(timeout.Token);
        return 0;
    }

    // Guest-like I/O: 64 KiB writes across up to 16 MiB, 32 in flight, FUA on every 16th.
    const int ChunkSize = 64 * 1024;
    var span = (int)Math.Min(16L * 1024 * 1024, disk.Capacity / ChunkSize * ChunkSize);
    var chunks = span / ChunkSize;
    var pattern = new byte[span];
    new Random(1234).NextBytes(pattern);
    long bytes = 0;
    long ops = 0;
    var stopwatch = Stopwatch.StartNew();

    var pending = new List<Task>();
    for (var i = 0; i < chunks; i++)
    {
        pending.Add(disk.WriteAsync((long)i * ChunkSize, pattern.AsMemory(i * ChunkSize, ChunkSize), forceUnitAccess: i % 16 == 0, timeout.Token).AsTask());
        if (pending.Count == 32)
        {
            await Task.WhenAll(pending);
            pending.Clear();
        }
    }

    await Task.WhenAll(pending);
    pending.Clear();
    bytes += span;
    ops += chunks;
    await disk.FlushAsync(timeout.Token);
    ops++;

    var back = new byte[span];
    for (var i = 0; i < chunks; i++)
    {
        pending.Add(disk.ReadAsync((long)i * ChunkSize, back.AsMemory(i * ChunkSize, ChunkSize), timeout.Token).AsTask());
    }

    await Task.WhenAll(pending);
    pending.Clear();
    bytes += span;
    ops += chunks;
    var verified = back.AsSpan().SequenceEqual(pattern);

    // Discard the first MiB and zero the second, then check the zeroes.
    await disk.DiscardAsync(0, 1024 * 1024, timeout.Token);
    await disk.WriteZeroesAsync(1024 * 1024, 1024 * 1024, timeout.Token);
    var zeroes = new byte[1024 * 1024];
    await disk.ReadAsync(1024 * 1024, zeroes, timeout.Token);
    ops += 3;
    bytes += zeroes.Length;
    var zeroed = !zeroes.AsSpan().ContainsAnyExcept((byte)0);
    stopwatch.Stop();

    Console.WriteLine("Summary:");
    Console.WriteLine($"  export size   {info.Size} bytes");
    Console.WriteLine($"  flags         {info.Flags}");
    Console.WriteLine($"  data moved    {bytes / (1024 * 1024)} MiB in {ops} operations");
    Console.WriteLine($"  elapsed       {stopwatch.Elapsed.TotalMilliseconds:0} ms ({bytes / (1024.0 * 1024) / stopwatch.Elapsed.TotalSeconds:0.0} MiB/s)");
    Console.WriteLine($"  reconnects    {attachment.ReconnectCount}");
    Console.WriteLine($"  verification  {(verified && zeroed ? "OK" : "FAILED")}");

    await vm.StopAsync(timeout.Token);
    Console.WriteLine($"Stopped (attachment state: {attachment.State}).");
    if (server is not null)
    {
        Console.WriteLine($"Server saw {server.Statistics.Writes} writes ({server.Statistics.FuaWrites} FUA), {server.Statistics.Flushes} flushes, {server.Statistics.Reads} reads, {server.Statistics.Disconnects} disconnect.");
    }

    return verified && zeroed ? 0 : 1;
}
catch (Exception ex) when (ex is NbdException or InvalidOperationException or OperationCanceledException or UriFormatException)
{
    Console.Error.WriteLine($"QuickStart failed: {ex.Message}");
    return 1;
}
finally
{
    if (server is not null)
    {
        await server.DisposeAsync();
    }
}
