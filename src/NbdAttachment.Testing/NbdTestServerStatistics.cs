namespace NbdAttachment.Testing;

/// <summary>Thread-safe counters describing what an <see cref="NbdTestServer"/> has seen.</summary>
public sealed class NbdTestServerStatistics
{
    private readonly Lock _optionsLock = new();
    private readonly List<uint> _options = [];
    private long _connectionsAccepted;
    private long _connectionsRefused;
    private long _reads;
    private long _writes;
    private long _fuaCommands;
    private long _flushes;
    private long _trims;
    private long _writeZeroes;
    private long _caches;
    private long _blockStatus;
    private long _disconnects;
    private long _bytesRead;
    private long _bytesWritten;
    private long _errorReplies;
    private long _protocolErrors;
    private int _maxConcurrentRequests;
    private string? _lastProtocolError;

    /// <summary>Connections accepted and served (refused ones excluded).</summary>
    public long ConnectionsAccepted => Interlocked.Read(ref _connectionsAccepted);

    /// <summary>Connections closed at once by <see cref="NbdFaultInjector.RefuseNextConnections"/>.</summary>
    public long ConnectionsRefused => Interlocked.Read(ref _connectionsRefused);

    /// <summary>NBD_CMD_READ requests received.</summary>
    public long Reads => Interlocked.Read(ref _reads);

    /// <summary>NBD_CMD_WRITE requests received.</summary>
    public long Writes => Interlocked.Read(ref _writes);

    /// <summary>Requests of any type carrying NBD_CMD_FLAG_FUA.</summary>
    public long FuaWrites => Interlocked.Read(ref _fuaCommands);

    /// <summary>NBD_CMD_FLUSH requests received.</summary>
    public long Flushes => Interlocked.Read(ref _flushes);

    /// <summary>NBD_CMD_TRIM requests received.</summary>
    public long Trims => Interlocked.Read(ref _trims);

    /// <summary>NBD_CMD_WRITE_ZEROES requests received.</summary>
    public long WriteZeroes => Interlocked.Read(ref _writeZeroes);

    /// <summary>NBD_CMD_CACHE requests received.</summary>
    public long Caches => Interlocked.Read(ref _caches);

    /// <summary>NBD_CMD_BLOCK_STATUS requests received.</summary>
    public long BlockStatus => Interlocked.Read(ref _blockStatus);

    /// <summary>NBD_CMD_DISC requests received.</summary>
    public long Disconnects => Interlocked.Read(ref _disconnects);

    /// <summary>Bytes returned by successful reads.</summary>
    public long BytesRead => Interlocked.Read(ref _bytesRead);

    /// <summary>Bytes stored by successful NBD_CMD_WRITE requests.</summary>
    public long BytesWritten => Interlocked.Read(ref _bytesWritten);

    /// <summary>Transmission replies that carried an error (injected or genuine).</summary>
    public long ErrorReplies => Interlocked.Read(ref _errorReplies);

    /// <summary>Connections the server dropped because the client broke the protocol.</summary>
    public long ProtocolErrors => Interlocked.Read(ref _protocolErrors);

    /// <summary>Description of the most recent protocol error, or null.</summary>
    public string? LastProtocolError => Volatile.Read(ref _lastProtocolError);

    /// <summary>Largest number of requests seen in flight at once on a single connection.</summary>
    public int MaxConcurrentRequests => Volatile.Read(ref _maxConcurrentRequests);

    /// <summary>Every option number received during handshakes, in arrival order.</summary>
    public IReadOnlyList<uint> OptionsReceived
    {
        get
        {
            lock (_optionsLock)
            {
                return [.. _options];
            }
        }
    }

    /// <summary>How many times an option (NBD_OPT_* number) was received.</summary>
    /// <param name="option">The option number, for example 7 for NBD_OPT_GO.</param>
    /// <returns>The count.</returns>
    public int GetOptionCount(uint option)
    {
        lock (_optionsLock)
        {
            return _options.Count(o => o == option);
        }
    }

    /// <summary>Sets every counter back to zero.</summary>
    public void Reset()
    {
        Interlocked.Exchange(ref _connectionsAccepted, 0);
        Interlocked.Exchange(ref _connectionsRefused, 0);
        Interlocked.Exchange(ref _reads, 0);
        Interlocked.Exchange(ref _writes, 0);
        Interlocked.Exchange(ref _fuaCommands, 0);
        Interlocked.Exchange(ref _flushes, 0);
        Interlocked.Exchange(ref _trims, 0);
        Interlocked.Exchange(ref _writeZeroes, 0);
        Interlocked.Exchange(ref _caches, 0);
        Interlocked.Exchange(ref _blockStatus, 0);
        Interlocked.Exchange(ref _disconnects, 0);
        Interlocked.Exchange(ref _bytesRead, 0);
        Interlocked.Exchange(ref _bytesWritten, 0);
        Interlocked.Exchange(ref _errorReplies, 0);
        Interlocked.Exchange(ref _protocolErrors, 0);

        Interlocked.Exchange(ref _maxConcurrentRequests, 0);
        Volatile.Write(ref _lastProtocolError, null);
        lock (_optionsLock)
        {
            _options.Clear();
        }
    }

    internal void ConnectionAccepted() => Interlocked.Increment(ref _connectionsAccepted);

    internal void ConnectionRefused() => Interlocked.Increment(ref _connectionsRefused);

    internal void BytesReadAdded(long count) => Interlocked.Add(ref _bytesRead, count);

    internal void BytesWrittenAdded(long count) => Interlocked.Add(ref _bytesWritten, count);

    internal void ErrorReplied() => Interlocked.Increment(ref _errorReplies);

    internal void OptionReceived(uint option)
    {
        lock (_optionsLock)
        {
            _options.Add(option);
        }
    }

    internal void ProtocolError(string message)
    {
        Interlocked.Increment(ref _protocolErrors);
        Volatile.Write(ref _lastProtocolError, message);
    }

    internal void ObserveConcurrency(int inFlight)
    {
        int seen = Volatile.Read(ref _maxConcurrentRequests);
        while (inFlight > seen)
        {
            int previous = Interlocked.CompareExchange(ref _maxConcurrentRequests, inFlight, seen);
            if (previous == seen)
            {
                return;
            }

            seen = previous;
        }
    }

    internal void CommandReceived(ushort type, ushort flags)
    {
        if ((flags & ServerWire.CmdFlagFua) != 0)
        {
            Interlocked.Increment(ref _fuaCommands);
        }

        switch ((NbdTestCommand)type)
        {
            case NbdTestCommand.Read: Interlocked.Increment(ref _reads); break;
            case NbdTestCommand.Write: Interlocked.Increment(ref _writes); break;
            case NbdTestCommand.Disconnect: Interlocked.Increment(ref _disconnects); break;
            case NbdTestCommand.Flush: Interlocked.Increment(ref _flushes); break;
            case NbdTestCommand.Trim: Interlocked.Increment(ref _trims); break;
            case NbdTestCommand.Cache: Interlocked.Increment(ref _caches); break;
            case NbdTestCommand.WriteZeroes: Interlocked.Increment(ref _writeZeroes); break;
            case NbdTestCommand.BlockStatus: Interlocked.Increment(ref _blockStatus); break;
            default: break;
        }
    }
}
