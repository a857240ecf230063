# syntax=docker/dockerfile:1
# Build: a static musl binary, so the runtime image needs no libc.
FROM rust:1.95-alpine AS build
# make: jemalloc (the operator's allocator) is built from source.
RUN apk add --no-cache musl-dev make
WORKDIR /src
# Everything the workspace manifest names must be here: the test crates are workspace members
# and the benchmark is a declared target. .ci/dockerfile-build checks this list builds.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY crds ./crds
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin tokensource-operator

# Run: distroless static (CA certificates, /etc/passwd with nonroot), as a non-root user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/tokensource-operator /usr/local/bin/tokensource-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tokensource-operator"]
CMD ["run"]
