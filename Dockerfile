# Container image for Locus (no engine on the development machines can build it; kept for
# deployers). Static-ish build on Debian, minimal runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p locus

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/locus /usr/local/bin/locus
USER 65532
ENTRYPOINT ["/usr/local/bin/locus"]
CMD ["serve", "--kubernetes"]
