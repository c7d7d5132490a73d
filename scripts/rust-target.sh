# Sourced by the scripts and .ci/run: picks the Rust target the build uses.
#
# The product is built for x86_64-unknown-linux-musl (.cargo/config.toml);
# scripts/install-deps.sh adds that target with rustup. On a machine where
# rustup could not fetch it, everything builds and tests as static-pie glibc
# instead (the seccomp lists cover both libcs), and this says so: the binary
# is then larger, and so is every role's memory (docs/benchmarks.md).
# Exports MIRAGE_TARGET, the triple in use.
MIRAGE_TARGET=x86_64-unknown-linux-musl
if [ -n "${CARGO_BUILD_TARGET:-}" ]; then
    MIRAGE_TARGET="$CARGO_BUILD_TARGET"
elif [ ! -d "$(rustc --print sysroot)/lib/rustlib/$MIRAGE_TARGET/lib" ]; then
    echo "warning: the Rust target $MIRAGE_TARGET is not installed (scripts/install-deps.sh adds it);" \
        "building static-pie glibc instead" >&2
    MIRAGE_TARGET=x86_64-unknown-linux-gnu
    export CARGO_BUILD_TARGET="$MIRAGE_TARGET"
fi
export MIRAGE_TARGET
