using System.Globalization;
using System.Text;

namespace NbdAttachment.InteropTests.Guest;

/// <summary>
/// Writes an uncompressed "newc" (SVR4, no CRC) cpio archive, the format the Linux kernel unpacks as an
/// initramfs: a 110-byte ASCII header ("070701" and thirteen 8-digit hex fields), the NUL-terminated name
/// padded to 4 bytes, the data padded to 4 bytes; the archive ends with an entry named "TRAILER!!!".
/// </summary>
public sealed class CpioWriter : IDisposable, IAsyncDisposable
{
    private const int TypeDirectory = 0x4000;
    private const int TypeRegular = 0x8000;
    private const int TypeSymlink = 0xA000;
    private const int TypeCharDevice = 0x2000;

    private readonly Stream _stream;
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private int _inode = 1;
    private bool _finished;

    public CpioWriter(Stream stream) => _stream = stream ?? throw new ArgumentNullException(nameof(stream));

    /// <summary>Adds a directory and any missing parents (path without a leading slash, e.g. "lib/modules").</summary>
    public void AddDirectory(string path, int permissions = 0x1ED /* 0755 */)
    {
        path = Normalize(path);
        var parent = Path.GetDirectoryName(path);
        if (!string.IsNullOrEmpty(parent))
        {
            AddDirectory(parent);
        }

        if (_names.Add(path))
        {
            WriteEntry(path, TypeDirectory | permissions, 2, [], 0, 0);
        }
    }

    public void AddFile(string path, ReadOnlySpan<byte> content, int permissions = 0x1A4 /* 0644 */)
    {
        path = Normalize(path);
        EnsureParent(path);
        if (!_names.Add(path))
        {
            throw new InvalidOperationException($"Duplicate cpio entry {path}.");
        }

        WriteEntry(path, TypeRegular | permissions, 1, content, 0, 0);
    }

    public void AddFile(string path, string content, int permissions = 0x1A4) =>
        AddFile(path, Encoding.UTF8.GetBytes(content.ReplaceLineEndings("\n")), permissions);

    public void AddSymlink(string path, string target)
    {
        path = Normalize(path);
        EnsureParent(path);
        if (_names.Add(path))
        {
            WriteEntry(path, TypeSymlink | 0x1FF, 1, Encoding.UTF8.GetBytes(target), 0, 0);
        }
    }

    public void AddCharDevice(string path, int major, int minor, int permissions = 0x180 /* 0600 */)
    {
        path = Normalize(path);
        EnsureParent(path);
        if (_names.Add(path))
        {
            WriteEntry(path, TypeCharDevice | permissions, 1, [], major, minor);
        }
    }

    /// <summary>Writes the trailer. Called by Dispose if not called before.</summary>
    public void Finish()
    {
        if (!_finished)
        {
            _finished = true;
            WriteEntry("TRAILER!!!", 0, 1, [], 0, 0, inode: 0);
            _stream.Flush();
        }
    }

    public void Dispose() => Finish();

    public ValueTask DisposeAsync()
    {
        Finish();
        return ValueTask.CompletedTask;
    }

    private void EnsureParent(string path)
    {
        var parent = Path.GetDirectoryName(path);
        if (!string.IsNullOrEmpty(parent))
        {
            AddDirectory(parent);
        }
    }

    private static string Normalize(string path) => path.Trim('/');

    private void WriteEntry(string name, int mode, int links, ReadOnlySpan<byte> data, int rdevMajor, int rdevMinor, int? inode = null)
    {
        ObjectDisposedException.ThrowIf(_finished && name != "TRAILER!!!", this);
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var header = new StringBuilder(110);
        header.Append("070701");
        foreach (var field in new long[]
                 {
                     inode ?? _inode++, mode, 0 /* uid */, 0 /* gid */, links, 0 /* mtime: reproducible */, data.Length,
                     0, 0 /* dev */, rdevMajor, rdevMinor, nameBytes.Length + 1, 0 /* check */,
                 })
        {
            header.Append(field.ToString("X8", CultureInfo.InvariantCulture));
        }

        var headerBytes = Encoding.ASCII.GetBytes(header.ToString());
        _stream.Write(headerBytes);
        _stream.Write(nameBytes);
        _stream.WriteByte(0);
        Pad(headerBytes.Length + nameBytes.Length + 1);
        _stream.Write(data);
        Pad(data.Length);
    }

    private void Pad(long length)
    {
        var pad = (int)((4 - (length % 4)) % 4);
        for (var i = 0; i < pad; i++)
        {
            _stream.WriteByte(0);
        }
    }
}
