using Microsoft.Extensions.Logging;
using NbdAttachment.Diagnostics;
using NbdAttachment.VhostUser.Protocol;

namespace NbdAttachment.VhostUser;

/// <summary>Log messages of the vhost-user-blk backend, bound to <see cref="VhostUserEventIds"/>.</summary>
internal static partial class VhostUserLog
{
    [LoggerMessage(VhostUserEventIds.Listening, LogLevel.Information, "vhost-user-blk backend listening on {Path}")]
    public static partial void Listening(ILogger logger, string path);

    [LoggerMessage(VhostUserEventIds.FrontEndConnected, LogLevel.Information, "vhost-user front-end connected on {Path}")]
    public static partial void FrontEndConnected(ILogger logger, string path);

    [LoggerMessage(VhostUserEventIds.FrontEndDisconnected, LogLevel.Information, "vhost-user front-end on {Path} disconnected")]
    public static partial void FrontEndDisconnected(ILogger logger, string path, Exception? exception);

    [LoggerMessage(VhostUserEventIds.SessionFailed, LogLevel.Warning, "vhost-user session failed")]
    public static partial void SessionFailed(ILogger logger, Exception exception);

    [LoggerMessage(VhostUserEventIds.FrontEndRefused, LogLevel.Warning, "A second vhost-user front-end connected to {Path} while one is served; refused")]
    public static partial void FrontEndRefused(ILogger logger, string path);

    [LoggerMessage(VhostUserEventIds.Message, LogLevel.Trace, "vhost-user message {Request} ({Size} bytes, {Fds} fds)")]
    public static partial void Message(ILogger logger, VhostUserRequest request, int size, int fds);

    [LoggerMessage(VhostUserEventIds.MemoryMapped, LogLevel.Debug, "Guest memory mapped: {Regions} regions")]
    public static partial void MemoryMapped(ILogger logger, int regions);

    [LoggerMessage(VhostUserEventIds.QueueStarted, LogLevel.Debug, "Queue {Queue} started: {Size} entries from available index {Base}")]
    public static partial void QueueStarted(ILogger logger, int queue, int size, ushort @base);

    [LoggerMessage(VhostUserEventIds.QueueStopped, LogLevel.Debug, "Queue {Queue} stopped at available index {Base}")]
    public static partial void QueueStopped(ILogger logger, int queue, ushort @base);

    [LoggerMessage(VhostUserEventIds.DrainTimedOut, LogLevel.Warning, "Queue {Queue} stopped with {InFlight} requests still in flight; their completions are dropped")]
    public static partial void DrainTimedOut(ILogger logger, int queue, int inFlight);

    [LoggerMessage(VhostUserEventIds.RequestFailed, LogLevel.Warning, "Guest request of type {Type} on queue {Queue} failed; the guest sees an I/O error")]
    public static partial void RequestFailed(ILogger logger, int queue, uint type, Exception exception);

    [LoggerMessage(VhostUserEventIds.Stopped, LogLevel.Information, "vhost-user-blk backend on {Path} stopped")]
    public static partial void Stopped(ILogger logger, string path);

    [LoggerMessage(VhostUserEventIds.HandlerFailed, LogLevel.Error, "A vhost-user backend event handler threw")]
    public static partial void HandlerFailed(ILogger logger, Exception exception);
}
