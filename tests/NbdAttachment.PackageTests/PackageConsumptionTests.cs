using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using System.Xml.Linq;
using Xunit.Abstractions;

namespace NbdAttachment.PackageTests;

/// <summary>
/// Packs the libraries with <c>dotnet pack</c> from a copy of the sources, then builds and runs a fresh console
/// project that consumes the packages from a local folder and does I/O through them.
/// </summary>
public sealed class PackageConsumptionTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Budget = TimeSpan.FromMinutes(4);

    private static readonly string[] PackedProjects =
    [
        "src/NbdAttachment/NbdAttachment.csproj",
        "src/NbdAttachment.Testing/NbdAttachment.Testing.csproj",
        "src/NbdAttachment.Extensions.DependencyInjection/NbdAttachment.Extensions.DependencyInjection.csproj",
        "src/NbdAttachment.Tools/NbdAttachment.Tools.csproj",
    ];

    [SkippableFact]
    public async Task Packed_packages_restore_build_and_run_in_a_fresh_console_project()
    {
        var dotnet = FindDotnet();
        Skip.If(dotnet is null, "the dotnet CLI was not found (DOTNET_HOST_PATH, DOTNET_ROOT or PATH), so packages cannot be packed");
        var repo = FindRepositoryRoot();
        Skip.If(repo is null, "the repository (NbdAttachment.sln) was not found above the test assembly");

        using var timeout = new CancellationTokenSource(Budget);
        var work = Directory.CreateTempSubdirectory("nbd-package-test-").FullName;
        try
        {
            // 1. Pack from a copy, so this never contends with the solution build for bin/ and obj/.
            var sources = Path.Combine(work, "src-copy");
            foreach (var file in new[] { "Directory.Build.props", "Directory.Packages.props", "global.json", ".editorconfig", "LICENSE" })
            {
                var from = Path.Combine(repo, file);
                if (File.Exists(from))
                {
                    File.Copy(from, Path.Combine(EnsureDirectory(sources), file));
                }
            }

            foreach (var project in PackedProjects)
            {
                CopyProjectDirectory(Path.GetDirectoryName(Path.Combine(repo, project))!, Path.GetDirectoryName(Path.Combine(sources, project))!);
            }

            var solution = new XElement("Solution", PackedProjects.Select(p => new XElement("Project", new XAttribute("Path", p))));
            File.WriteAllText(Path.Combine(sources, "packages.slnx"), solution.ToString());
            var feed = Path.Combine(work, "feed");
            await RunAsync(dotnet!, sources, timeout.Token, "pack", "packages.slnx", "-c", "Release", "-o", feed);

            var version = ReadVersion(Path.Combine(sources, "Directory.Build.props"));
            foreach (var id in new[] { "NbdAttachment", "NbdAttachment.Testing", "NbdAttachment.Extensions.DependencyInjection" })
            {
                var package = Path.Combine(feed, $"{id}.{version}.nupkg");
                File.Exists(package).Should().BeTrue($"{id} should be packed as {package}");
                File.Exists(Path.Combine(feed, $"{id}.{version}.snupkg")).Should().BeTrue($"{id} should have a symbol package");
                AssertPackageContents(package, id);
            }

            // 2. A fresh console project that knows nothing of the repository: the local feed is added to the
            // machine's sources, and packages are restored into a private folder (so a package of the same
            // version cached by an earlier run is never used); the global folder is only a read-only fallback.
            var app = EnsureDirectory(Path.Combine(work, "app"));
            WriteConsoleProject(app, feed, version);
            var run = await RunAsync(dotnet!, app, timeout.Token, "run", "-c", "Release");

            run.Should().Contain("wrote and verified 1048576 bytes");
            run.Should().Contain("dependency injection client verified");
            run.Should().Contain($"NbdAttachment {version}");
            Directory.Exists(Path.Combine(app, "packages", "nbdattachment", version)).Should().BeTrue("the package comes from the local feed");

            // 3. The `nbd` tool installs from the same feed into a tool path and runs against a server.
            File.Exists(Path.Combine(feed, $"NbdAttachment.Tools.{version}.nupkg")).Should().BeTrue("the tool is packed");
            var tools = Path.Combine(work, "tools");
            await RunAsync(dotnet!, app, msbuild: false, timeout.Token, "tool", "install", "--tool-path", tools, "--add-source", feed, "NbdAttachment.Tools", "--version", version);
            var nbd = Path.Combine(tools, "nbd");
            (await RunAsync(nbd, work, msbuild: false, timeout.Token, "--help")).Should().Contain("copy");
            await using var server = await NbdAttachment.Testing.NbdTestServer.StartAsync(new NbdAttachment.Testing.NbdTestServerOptions
            {
                Exports = [new NbdAttachment.Testing.NbdTestExportOptions { Size = 1 << 20 }],
            });
            (await RunAsync(nbd, work, msbuild: false, timeout.Token, "info", server.Uri.ToString())).Should().Contain("1,048,576 bytes");
        }
        finally
        {
            try
            {
                Directory.Delete(work, recursive: true);
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
    }

    private static void AssertPackageContents(string package, string id)
    {
        using var zip = ZipFile.OpenRead(package);
        var names = zip.Entries.Select(e => e.FullName).ToList();
        names.Should().Contain("PACKAGE.md");
        names.Should().Contain($"lib/net10.0/{id}.dll");
        names.Should().Contain($"lib/net10.0/{id}.xml", "XML documentation ships with the package");
        using var nuspecStream = zip.Entries.Single(e => e.FullName == $"{id}.nuspec").Open();
        var nuspec = XDocument.Load(nuspecStream);
        XNamespace ns = nuspec.Root!.Name.Namespace;
        var metadata = nuspec.Root.Element(ns + "metadata")!;
        metadata.Element(ns + "license")!.Value.Should().Be("MIT");
        metadata.Element(ns + "readme")!.Value.Should().Be("PACKAGE.md");
        metadata.Element(ns + "description")!.Value.Should().NotBeNullOrWhiteSpace();
        metadata.Element(ns + "authors")!.Value.Should().NotBeNullOrWhiteSpace();
        metadata.Element(ns + "tags")!.Value.Should().Contain("nbd");
        var dependencies = metadata.Descendants(ns + "dependency").Select(d => (string)d.Attribute("id")!).ToList();
        dependencies.Should().NotContain(d => d.Contains("PublicApiAnalyzers", StringComparison.Ordinal), "analyzers are private");
        if (id == "NbdAttachment")
        {
            dependencies.Should().NotContain(d => d.StartsWith("Microsoft.Extensions.DependencyInjection", StringComparison.Ordinal), "the core package needs no container");
            dependencies.Should().NotContain(d => d.StartsWith("Microsoft.Extensions.Hosting", StringComparison.Ordinal));
        }
    }

    private static void WriteConsoleProject(string app, string feed, string version)
    {
        // Empty Directory.* files stop MSBuild from importing anything from folders above the temp directory.
        File.WriteAllText(Path.Combine(app, "Directory.Build.props"), "<Project />\n");
        File.WriteAllText(Path.Combine(app, "Directory.Build.targets"), "<Project />\n");
        File.WriteAllText(Path.Combine(app, "Directory.Packages.props"), "<Project />\n");
        File.WriteAllText(Path.Combine(app, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <add key="nbd-local-feed" value="{new XText(feed)}" />
              </packageSources>
            </configuration>
            """);
        var fallback = GlobalPackagesFolder();
        File.WriteAllText(Path.Combine(app, "PackageConsumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
                <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
                <NuGetAudit>false</NuGetAudit>
                <RestorePackagesPath>$(MSBuildProjectDirectory)/packages</RestorePackagesPath>
                <RestoreAdditionalProjectFallbackFolders>{new XText(fallback ?? string.Empty)}</RestoreAdditionalProjectFallbackFolders>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="NbdAttachment" Version="[{version}]" />
                <PackageReference Include="NbdAttachment.Testing" Version="[{version}]" />
                <PackageReference Include="NbdAttachment.Extensions.DependencyInjection" Version="[{version}]" />
                <PackageReference Include="Microsoft.Extensions.DependencyInjection" Version="10.0.15" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(app, "Program.cs"), """
            using System.Reflection;
            using Microsoft.Extensions.DependencyInjection;
            using NbdAttachment.Client;
            using NbdAttachment.Extensions.DependencyInjection;
            using NbdAttachment.Testing;

            await using var server = await NbdTestServer.StartAsync();
            var data = new byte[1024 * 1024];
            new Random(20240601).NextBytes(data);

            await using (var client = await NbdClient.ConnectAsync(server.Uri))
            {
                await client.WriteAsync(0, data);
                await client.FlushAsync();
                var back = new byte[data.Length];
                await client.ReadAsync(0, back);
                if (!back.AsSpan().SequenceEqual(data))
                {
                    Console.Error.WriteLine("read-back mismatch");
                    return 2;
                }

                Console.WriteLine($"wrote and verified {data.Length} bytes (export size {client.Export.Size})");
            }

            var services = new ServiceCollection().AddNbdClient("disk", server.Uri, o => o with { MaxInFlightRequests = 8 });
            await using (var provider = services.BuildServiceProvider())
            {
                var client = await provider.GetRequiredService<INbdClientFactory>().GetClientAsync("disk");
                var back = new byte[4096];
                await client.ReadAsync(65536, back);
                if (!back.AsSpan().SequenceEqual(data.AsSpan(65536, 4096)))
                {
                    Console.Error.WriteLine("dependency injection client read mismatch");
                    return 3;
                }

                Console.WriteLine("dependency injection client verified");
            }

            var informational = typeof(NbdClient).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "?";
            Console.WriteLine($"NbdAttachment {informational.Split('+')[0]}");
            return 0;
            """);
    }

    private Task<string> RunAsync(string dotnet, string directory, CancellationToken cancellationToken, params string[] arguments) =>
        RunAsync(dotnet, directory, msbuild: true, cancellationToken, arguments);

    /// <summary>Runs a program to completion and returns its output; it must exit 0. <paramref name="msbuild"/>: a build command, run without build servers.</summary>
    private async Task<string> RunAsync(string dotnet, string directory, bool msbuild, CancellationToken cancellationToken, params string[] arguments)
    {
        var start = new ProcessStartInfo(dotnet)
        {
            WorkingDirectory = directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        // No build servers or reused MSBuild nodes: nothing may outlive the test holding its output pipes.
        if (msbuild)
        {
            start.ArgumentList.Add("--disable-build-servers");
            start.ArgumentList.Add("-nodeReuse:false");
        }

        // Variables that the outer `dotnet test` set for its own MSBuild and test host must not leak in.
        foreach (var key in start.Environment.Keys.ToList())
        {
            if (key.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase) || key.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase)
                || key.Equals("MSBuildSDKsPath", StringComparison.OrdinalIgnoreCase) || key.Equals("MSBuildExtensionsPath", StringComparison.OrdinalIgnoreCase)
                || key.Equals("DOTNET_HOST_PATH", StringComparison.OrdinalIgnoreCase))
            {
                start.Environment.Remove(key);
            }
        }

        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";

        var text = new StringBuilder();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => Append(e.Data);
        process.ErrorDataReceived += (_, e) => Append(e.Data);
        var stopwatch = Stopwatch.StartNew();
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            await process.WaitForExitAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"`{Path.GetFileName(dotnet)} {string.Join(' ', arguments)}` did not finish within the {Budget.TotalMinutes}-minute budget:\n{Snapshot()}");
        }

        process.WaitForExit(); // drains the asynchronous output readers
        var all = Snapshot();
        output.WriteLine($"$ {Path.GetFileName(dotnet)} {string.Join(' ', arguments)}   ({stopwatch.Elapsed.TotalSeconds:F1} s, exit {process.ExitCode})");
        output.WriteLine(all);
        process.ExitCode.Should().Be(0, $"`{Path.GetFileName(dotnet)} {string.Join(' ', arguments)}` should succeed; output:\n{all}");
        return all;

        void Append(string? line)
        {
            if (line is not null)
            {
                lock (text)
                {
                    text.AppendLine(line);
                }
            }
        }

        string Snapshot()
        {
            lock (text)
            {
                return text.ToString();
            }
        }
    }

    private static string ReadVersion(string props)
    {
        var document = XDocument.Load(props);
        var version = document.Descendants("Version").FirstOrDefault()?.Value
            ?? document.Descendants("VersionPrefix").FirstOrDefault()?.Value;
        version.Should().NotBeNullOrEmpty("Directory.Build.props sets the package version");
        return version!;
    }

    private static string? FindDotnet()
    {
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host))
        {
            return host;
        }

        var root = Environment.GetEnvironmentVariable("DOTNET_ROOT");
        if (!string.IsNullOrEmpty(root) && File.Exists(Path.Combine(root, "dotnet")))
        {
            return Path.Combine(root, "dotnet");
        }

        foreach (var directory in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(directory, OperatingSystem.IsWindows() ? "dotnet.exe" : "dotnet");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private static string? FindRepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "NbdAttachment.sln")))
            {
                return directory.FullName;
            }
        }

        return null;
    }

    private static string? GlobalPackagesFolder()
    {
        var configured = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        if (!string.IsNullOrEmpty(configured))
        {
            return configured;
        }

        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        var folder = Path.Combine(home, ".nuget", "packages");
        return Directory.Exists(folder) ? folder : null;
    }

    private static void CopyProjectDirectory(string from, string to)
    {
        EnsureDirectory(to);
        foreach (var file in Directory.EnumerateFiles(from))
        {
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        }

        foreach (var directory in Directory.EnumerateDirectories(from))
        {
            var name = Path.GetFileName(directory);
            if (name is "bin" or "obj")
            {
                continue;
            }

            CopyProjectDirectory(directory, Path.Combine(to, name));
        }
    }

    private static string EnsureDirectory(string path)
    {
        Directory.CreateDirectory(path);
        return path;
    }
}
