namespace NbdAttachment.Testing;

/// <summary>Allocation state of one page of a <see cref="SparseMemoryStore"/>.</summary>
internal enum PageState
{
    /// <summary>Not allocated; reads as zeroes.</summary>
    Hole,

    /// <summary>Allocated but known to contain only zeroes.</summary>
    Zero,

    /// <summary>Allocated with data.</summary>
    Data,
}

/// <summary>One run of pages sharing an allocation state, clipped to a requested range.</summary>
internal readonly record struct StoreExtent(long Offset, long Length, PageState State);

/// <summary>
/// A sparse, thread-safe byte store made of 64 KiB pages allocated on first write. Optionally keeps a
/// volatile write-back cache: writes land in an overlay of page copies that reaches the stable pages only
/// on <see cref="Flush"/>, and <see cref="DiscardCache"/> throws it away.
/// </summary>
internal sealed class SparseMemoryStore
{
    /// <summary>Allocation granularity.</summary>
    public const int PageSize = 64 * 1024;

    /// <summary>Shared marker for "allocated, all zeroes"; never written to.</summary>
    private static readonly byte[] s_zeroPage = new byte[PageSize];

    private readonly Lock _lock = new();
    private readonly Dictionary<long, byte[]> _stable = [];

    /// <summary>Volatile overlay (null when write-through). A null value is a discarded page (a hole).</summary>
    private readonly Dictionary<long, byte[]?>? _cache;

    public SparseMemoryStore(long size, bool volatileCache)
    {
        Size = size;
        _cache = volatileCache ? [] : null;
    }

    /// <summary>Store size in bytes.</summary>
    public long Size { get; }

    /// <summary>True when the volatile cache holds changes not yet flushed.</summary>
    public bool HasUnflushedChanges
    {
        get
        {
            lock (_lock)
            {
                return _cache is { Count: > 0 };
            }
        }
    }

    /// <summary>Bytes held by allocated pages in the visible view (known-zero pages included).</summary>
    public long AllocatedBytes
    {
        get
        {
            lock (_lock)
            {
                long pages = 0;
                foreach (long index in _stable.Keys)
                {
                    if (_cache is null || !_cache.ContainsKey(index))
                    {
                        pages++;
                    }
                }

                if (_cache is not null)
                {
                    foreach (byte[]? page in _cache.Values)
                    {
                        if (page is not null)
                        {
                            pages++;
                        }
                    }
                }

                return pages * PageSize;
            }
        }
    }

    /// <summary>Reads the visible contents (cache over stable pages).</summary>
    public void Read(long offset, Span<byte> destination) => ReadCore(offset, destination, stableOnly: false);

    /// <summary>Reads only what has reached stable pages, ignoring the volatile cache.</summary>
    public void ReadStable(long offset, Span<byte> destination) => ReadCore(offset, destination, stableOnly: true);

    /// <summary>Writes data. With <paramref name="durable"/> the data goes to stable pages and to any cached copy.</summary>
    public void Write(long offset, ReadOnlySpan<byte> source, bool durable)
    {
        lock (_lock)
        {
            while (!source.IsEmpty)
            {
                long index = offset / PageSize;
                int within = (int)(offset % PageSize);
                int count = Math.Min(source.Length, PageSize - within);
                ReadOnlySpan<byte> piece = source[..count];
                if (_cache is null || durable)
                {
                    piece.CopyTo(StableWritable(index).AsSpan(within));
                    if (_cache is not null && _cache.ContainsKey(index))
                    {
                        piece.CopyTo(CacheWritable(index).AsSpan(within));
                    }
                }
                else
                {
                    piece.CopyTo(CacheWritable(index).AsSpan(within));
                }

                offset += count;
                source = source[count..];
            }
        }
    }

    /// <summary>
    /// Makes a range read as zeroes. Whole pages are deallocated, or marked known-zero when
    /// <paramref name="keepAllocated"/> is set; partial pages are zeroed in place.
    /// </summary>
    public void Zero(long offset, long length, bool keepAllocated)
    {
        if (length <= 0)
        {
            return;
        }

        lock (_lock)
        {
            long end = offset + length;
            long firstWhole = (offset + PageSize - 1) / PageSize;
            long endWhole = end / PageSize;
            if (firstWhole >= endWhole)
            {
                // No whole page: at most two partial pages.
                ZeroPartial(offset, end, keepAllocated);
                return;
            }

            ZeroPartial(offset, firstWhole * PageSize, keepAllocated);
            ZeroPartial(endWhole * PageSize, end, keepAllocated);
            if (keepAllocated)
            {
                for (long index = firstWhole; index < endWhole; index++)
                {
                    SetPage(index, s_zeroPage);
                }
            }
            else
            {
                foreach (long index in CandidatePages(firstWhole, endWhole))
                {
                    DropPage(index);
                }
            }
        }
    }

    /// <summary>Moves cached pages to stable storage.</summary>
    public void Flush()
    {
        if (_cache is null)
        {
            return;
        }

        lock (_lock)
        {
            foreach ((long index, byte[]? page) in _cache)
            {
                if (page is null)
                {
                    _stable.Remove(index);
                }
                else
                {
                    _stable[index] = page;
                }
            }

            _cache.Clear();
        }
    }

    /// <summary>Throws away every unflushed change.</summary>
    public void DiscardCache()
    {
        if (_cache is null)
        {
            return;
        }

        lock (_lock)
        {
            _cache.Clear();
        }
    }

    /// <summary>The visible allocation state of the page holding <paramref name="offset"/>.</summary>
    public PageState GetState(long offset)
    {
        lock (_lock)
        {
            return StateOf(Visible(offset / PageSize));
        }
    }

    /// <summary>
    /// Allocation extents covering [offset, offset + length), merged where neighbours share a state.
    /// At most <paramref name="maxExtents"/> are returned; the list may then cover less than asked.
    /// </summary>
    public List<StoreExtent> GetExtents(long offset, long length, int maxExtents)
    {
        var result = new List<StoreExtent>();
        if (length <= 0)
        {
            return result;
        }

        lock (_lock)
        {
            long end = offset + length;
            long cursor = offset;
            foreach (long index in CandidatePages(offset / PageSize, ((end - 1) / PageSize) + 1))
            {
                PageState state = StateOf(Visible(index));
                if (state == PageState.Hole)
                {
                    continue;
                }

                long pageStart = Math.Max(index * PageSize, offset);
                long pageEnd = Math.Min((index + 1) * PageSize, end);
                if (pageStart > cursor && !Append(result, cursor, pageStart - cursor, PageState.Hole, maxExtents))
                {
                    return result;
                }

                if (!Append(result, pageStart, pageEnd - pageStart, state, maxExtents))
                {
                    return result;
                }

                cursor = pageEnd;
            }

            if (cursor < end)
            {
                Append(result, cursor, end - cursor, PageState.Hole, maxExtents);
            }
        }

        return result;
    }

    private static bool Append(List<StoreExtent> extents, long offset, long length, PageState state, int maxExtents)
    {
        if (extents.Count > 0 && extents[^1].State == state && extents[^1].Offset + extents[^1].Length == offset)
        {
            StoreExtent last = extents[^1];
            extents[^1] = last with { Length = last.Length + length };
            return true;
        }

        if (extents.Count >= maxExtents)
        {
            return false;
        }

        extents.Add(new StoreExtent(offset, length, state));
        return true;
    }

    private static PageState StateOf(byte[]? page) =>
        page is null ? PageState.Hole : ReferenceEquals(page, s_zeroPage) ? PageState.Zero : PageState.Data;

    private void ReadCore(long offset, Span<byte> destination, bool stableOnly)
    {
        lock (_lock)
        {
            while (!destination.IsEmpty)
            {
                long index = offset / PageSize;
                int within = (int)(offset % PageSize);
                int count = Math.Min(destination.Length, PageSize - within);
                byte[]? page = stableOnly ? _stable.GetValueOrDefault(index) : Visible(index);
                if (page is null)
                {
                    destination[..count].Clear();
                }
                else
                {
                    page.AsSpan(within, count).CopyTo(destination);
                }

                offset += count;
                destination = destination[count..];
            }
        }
    }

    /// <summary>Zeroes [start, end) which lies inside a single page (or is empty).</summary>
    private void ZeroPartial(long start, long end, bool keepAllocated)
    {
        while (start < end)
        {
            long index = start / PageSize;
            long pageEnd = Math.Min(end, (index + 1) * PageSize);
            byte[]? page = Visible(index);
            if (page is null)
            {
                if (keepAllocated)
                {
                    SetPage(index, s_zeroPage);
                }
            }
            else if (!ReferenceEquals(page, s_zeroPage))
            {
                byte[] writable = _cache is null ? StableWritable(index) : CacheWritable(index);
                writable.AsSpan((int)(start % PageSize), (int)(pageEnd - start)).Clear();
            }

            start = pageEnd;
        }
    }

    private byte[]? Visible(long index)
    {
        if (_cache is not null && _cache.TryGetValue(index, out byte[]? cached))
        {
            return cached;
        }

        return _stable.GetValueOrDefault(index);
    }

    private byte[] StableWritable(long index)
    {
        if (!_stable.TryGetValue(index, out byte[]? page) || ReferenceEquals(page, s_zeroPage))
        {
            page = new byte[PageSize];
            _stable[index] = page;
        }

        return page;
    }

    private byte[] CacheWritable(long index)
    {
        if (_cache!.TryGetValue(index, out byte[]? cached))
        {
            if (cached is not null && !ReferenceEquals(cached, s_zeroPage))
            {
                return cached;
            }

            cached = new byte[PageSize];
        }
        else
        {
            cached = new byte[PageSize];
            if (_stable.TryGetValue(index, out byte[]? stable) && !ReferenceEquals(stable, s_zeroPage))
            {
                stable.CopyTo(cached, 0);
            }
        }

        _cache[index] = cached;
        return cached;
    }

    private void SetPage(long index, byte[] page)
    {
        if (_cache is null)
        {
            _stable[index] = page;
        }
        else
        {
            _cache[index] = page;
        }
    }

    private void DropPage(long index)
    {
        if (_cache is null)
        {
            _stable.Remove(index);
        }
        else if (_stable.ContainsKey(index))
        {
            _cache[index] = null;
        }
        else
        {
            _cache.Remove(index);
        }
    }

    /// <summary>
    /// Page indexes in [first, end) that may be allocated, in ascending order. Scans the range when it is
    /// small, and otherwise filters the dictionaries' keys, so huge sparse ranges cost nothing.
    /// </summary>
    private List<long> CandidatePages(long first, long end)
    {
        long rangePages = end - first;
        int known = _stable.Count + (_cache?.Count ?? 0);
        var result = new List<long>();
        if (rangePages <= known)
        {
            for (long index = first; index < end; index++)
            {
                if (_stable.ContainsKey(index) || (_cache is not null && _cache.ContainsKey(index)))
                {
                    result.Add(index);
                }
            }

            return result;
        }

        foreach (long index in _stable.Keys)
        {
            if (index >= first && index < end)
            {
                result.Add(index);
            }
        }

        if (_cache is not null)
        {
            foreach (long index in _cache.Keys)
            {
                if (index >= first && index < end && !_stable.ContainsKey(index))
                {
                    result.Add(index);
                }
            }
        }

        result.Sort();
        return result;
    }
}
