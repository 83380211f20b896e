using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using NbdAttachment.Client;

namespace NbdAttachment.Extensions.DependencyInjection;

/// <summary>Registers named NBD clients and the <see cref="INbdClientFactory"/> that connects them.</summary>
public static class NbdServiceCollectionExtensions
{
    /// <summary>Registers <see cref="INbdClientFactory"/> (a singleton) without any client.</summary>
    /// <param name="services">The service collection.</param>
    /// <returns><paramref name="services"/>.</returns>
    public static IServiceCollection AddNbdClientFactory(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddOptions();
        services.TryAddSingleton<INbdClientFactory>(static provider => new NbdClientFactory(
            provider.GetRequiredService<IOptionsMonitor<NbdClientRegistrationOptions>>(),
            provider.GetService<ILoggerFactory>()));
        return services;
    }

    /// <summary>Registers a client named <paramref name="name"/> for <paramref name="uri"/> with default settings.</summary>
    /// <param name="services">The service collection.</param>
    /// <param name="name">The registration name passed to <see cref="INbdClientFactory.GetClientAsync"/>.</param>
    /// <param name="uri">The NBD URL.</param>
    /// <returns><paramref name="services"/>.</returns>
    public static IServiceCollection AddNbdClient(this IServiceCollection services, string name, Uri uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        return services.AddNbdClient(name, registration => registration.Uri = uri);
    }

    /// <summary>
    /// Registers a client named <paramref name="name"/> for <paramref name="uri"/>; <paramref name="configure"/>
    /// derives its settings from <see cref="NbdClientOptions.Default"/> (for example
    /// <c>o =&gt; o with { MaxInFlightRequests = 32 }</c>).
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="name">The registration name passed to <see cref="INbdClientFactory.GetClientAsync"/>.</param>
    /// <param name="uri">The NBD URL.</param>
    /// <param name="configure">Returns the client settings to use, given the current ones.</param>
    /// <returns><paramref name="services"/>.</returns>
    public static IServiceCollection AddNbdClient(this IServiceCollection services, string name, Uri uri, Func<NbdClientOptions, NbdClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(uri);
        ArgumentNullException.ThrowIfNull(configure);
        return services.AddNbdClient(name, registration =>
        {
            registration.Uri = uri;
            registration.ClientOptions = configure(registration.ClientOptions)
                ?? throw new InvalidOperationException("The configure callback returned null NbdClientOptions.");
        });
    }

    /// <summary>
    /// Registers a client named <paramref name="name"/> configured by <paramref name="configure"/>, which must set
    /// <see cref="NbdClientRegistrationOptions.Uri"/>. Further configuration can be added with
    /// <c>services.Configure&lt;NbdClientRegistrationOptions&gt;(name, ...)</c>.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="name">The registration name passed to <see cref="INbdClientFactory.GetClientAsync"/>.</param>
    /// <param name="configure">Configures the registration.</param>
    /// <returns><paramref name="services"/>.</returns>
    public static IServiceCollection AddNbdClient(this IServiceCollection services, string name, Action<NbdClientRegistrationOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddNbdClientFactory();
        services.Configure(name, configure);
        return services;
    }
}
