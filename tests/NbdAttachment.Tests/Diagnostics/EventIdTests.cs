using System.Reflection;
using NbdAttachment.Diagnostics;

namespace NbdAttachment.Tests.Diagnostics;

public sealed class EventIdTests
{
    [Fact]
    public void Event_ids_are_unique_across_the_library()
    {
        var ids = new[] { typeof(NbdEventIds), typeof(NbdAttachmentEventIds), typeof(VhostUserEventIds) }
            .SelectMany(t => t.GetFields(BindingFlags.Public | BindingFlags.Static))
            .Where(f => f.IsLiteral && f.FieldType == typeof(int))
            .Select(f => (Name: f.Name, Id: (int)f.GetRawConstantValue()!))
            .ToList();
        ids.Should().HaveCountGreaterThan(20);
        ids.GroupBy(i => i.Id).Where(g => g.Count() > 1).Should().BeEmpty();
    }

    [Fact]
    public void Every_logger_message_uses_a_catalogued_id()
    {
        var catalogued = new[] { typeof(NbdEventIds), typeof(NbdAttachmentEventIds), typeof(VhostUserEventIds) }
            .SelectMany(t => t.GetFields(BindingFlags.Public | BindingFlags.Static))
            .Select(f => (int)f.GetRawConstantValue()!)
            .ToHashSet();
        var used = typeof(NbdEventIds).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static))
            .Select(m => m.GetCustomAttribute<Microsoft.Extensions.Logging.LoggerMessageAttribute>())
            .Where(a => a is not null)
            .Select(a => a!.EventId)
            .ToList();
        used.Should().NotBeEmpty();
        used.Should().OnlyContain(id => catalogued.Contains(id));
        used.Should().OnlyHaveUniqueItems();
    }
}
