#!/usr/bin/env bash
# Rewrites PublicAPI.Unshipped.txt of every project that tracks its public API
# (Microsoft.CodeAnalysis.PublicApiAnalyzers) from the RS0016 diagnostics of a fresh build.
# PublicAPI.Shipped.txt is left alone. Usage: scripts/update-public-api.sh [project.csproj ...]
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if (($# == 0)); then
    mapfile -t projects < <(find src -name PublicAPI.Unshipped.txt -printf '%h\n' | sort | while read -r d; do ls "$d"/*.csproj; done)
else
    projects=("$@")
fi

for project in "${projects[@]}"; do
    project="$(realpath "$project")"
    dir="$(dirname "$project")"
    unshipped="$dir/PublicAPI.Unshipped.txt"
    cp "$unshipped" "$unshipped.bak"
    printf '#nullable enable\n' >"$unshipped"
    log="$(mktemp)"
    # Project references that track their own API must build cleanly first, so build without
    # warnings-as-errors; only this project's RS0016 lines are collected.
    if ! dotnet build "$project" -c Release --no-incremental -p:TreatWarningsAsErrors=false \
        -consoleLoggerParameters:NoSummary >"$log" 2>&1; then
        mv "$unshipped.bak" "$unshipped"
        grep -E ' error ' "$log" | sort -u | head -n 20 >&2 || true
        echo "build of $project failed; $unshipped left as it was" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$unshipped.bak"
    {
        printf '#nullable enable\n'
        grep -F "[$project]" "$log" | grep -F 'RS0016' |
            sed -n "s/.*RS0016: Symbol '\(.*\)' is not part of the declared public API.*/\1/p" |
            LC_ALL=C sort -u || true
    } >"$unshipped.new"
    mv "$unshipped.new" "$unshipped"
    rm -f "$log"
    echo "${unshipped#"$repo_root"/}: $(($(wc -l <"$unshipped") - 1)) entries"
done
