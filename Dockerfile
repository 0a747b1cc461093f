# syntax=docker/dockerfile:1
# Multi-stage build of a static (musl) portkey-budget-operator binary in an image with no shell,
# running as a non-root user. Build: docker build -t portkey-budget-operator:0.1.0 .

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl || true
COPY src ./src
COPY config ./config
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl --bin portkey-budget-operator \
 && cp target/x86_64-unknown-linux-musl/release/portkey-budget-operator /portkey-budget-operator

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /portkey-budget-operator /usr/local/bin/portkey-budget-operator
# The nonroot user of distroless images; no shell, no package manager, nothing else.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/portkey-budget-operator"]
CMD ["run"]
