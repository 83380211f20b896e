namespace NbdAttachment.Client;

/// <summary>
/// How a client reconnects after a transport failure: exponential backoff with jitter, bounded by a number of
/// attempts and a total duration. Immutable.
/// </summary>
public sealed record NbdReconnectPolicy
{
    /// <summary>Reconnect for up to one minute: 100 ms doubling to 5 s, 20% jitter, unlimited attempts.</summary>
    public static NbdReconnectPolicy Default { get; } = new();

    /// <summary>Never reconnect: the first transport failure fails the client.</summary>
    public static NbdReconnectPolicy Disabled { get; } = new() { MaxAttempts = 0 };

    /// <summary>Attempts before giving up; <see langword="null"/> for no limit (then <see cref="MaxDuration"/> bounds it). Default: null.</summary>
    public int? MaxAttempts { get; init; }

    /// <summary>Time from the failure after which no new attempt starts. Default: 1 minute. <see cref="Timeout.InfiniteTimeSpan"/> for no limit.</summary>
    public TimeSpan MaxDuration { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>Delay before the first attempt. Default: 100 ms.</summary>
    public TimeSpan InitialDelay { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Largest delay between attempts. Default: 5 s.</summary>
    public TimeSpan MaxDelay { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Factor applied to the delay after each attempt. Default: 2.</summary>
    public double Multiplier { get; init; } = 2;

    /// <summary>Random spread of each delay, as a fraction (0.2 = ±20%). Default: 0.2.</summary>
    public double Jitter { get; init; } = 0.2;

    /// <summary><see langword="true"/> when this policy never reconnects.</summary>
    public bool IsDisabled => MaxAttempts == 0;

    /// <summary>The delay before attempt <paramref name="attempt"/> (1-based), or <see langword="null"/> to give up.</summary>
    /// <param name="attempt">The attempt about to be made, starting at 1.</param>
    /// <param name="elapsed">Time since the connection was lost.</param>
    public TimeSpan? GetDelay(int attempt, TimeSpan elapsed)
    {
        if (attempt < 1 || (MaxAttempts is { } max && attempt > max))
        {
            return null;
        }

        if (MaxDuration != Timeout.InfiniteTimeSpan && elapsed >= MaxDuration)
        {
            return null;
        }

        var baseMs = InitialDelay.TotalMilliseconds * Math.Pow(Multiplier, Math.Min(attempt - 1, 30));
        baseMs = Math.Min(baseMs, MaxDelay.TotalMilliseconds);
        var spread = baseMs * Jitter * ((Random.Shared.NextDouble() * 2) - 1);
        return TimeSpan.FromMilliseconds(Math.Max(0, baseMs + spread));
    }

    /// <summary>Throws <see cref="ArgumentException"/> when a value is out of range.</summary>
    public void Validate()
    {
        if (MaxAttempts is < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxAttempts), MaxAttempts, "MaxAttempts must not be negative.");
        }

        if (InitialDelay < TimeSpan.Zero || MaxDelay < InitialDelay)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxDelay), MaxDelay, "Delays must be non-negative and MaxDelay at least InitialDelay.");
        }

        if (Multiplier < 1 || double.IsNaN(Multiplier))
        {
            throw new ArgumentOutOfRangeException(nameof(Multiplier), Multiplier, "Multiplier must be at least 1.");
        }

        if (Jitter is < 0 or > 1 || double.IsNaN(Jitter))
        {
            throw new ArgumentOutOfRangeException(nameof(Jitter), Jitter, "Jitter must be between 0 and 1.");
        }

        if (MaxDuration <= TimeSpan.Zero && MaxDuration != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxDuration), MaxDuration, "MaxDuration must be positive or infinite.");
        }
    }
}
