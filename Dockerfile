# Static pageserver and pagefetcher binaries in an empty image.
#
#   docker build -t postcopy .
#   docker run --rm postcopy pageserver --help
#
# The binaries need no libc (CGO_ENABLED=0) and run as an unprivileged user
# (65532) unless the deployment grants more; see the README's "Running without
# root" for the capabilities each one needs, and packaging/systemd for units.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/pageserver ./cmd/pagefetcher

FROM scratch
COPY --from=build /out/pageserver /out/pagefetcher /usr/local/bin/
COPY LICENSE /usr/share/doc/postcopy/LICENSE
ENV PATH=/usr/local/bin
USER 65532:65532
# pageserver's default port; pagefetcher listens on a Unix socket only.
EXPOSE 7470
ENTRYPOINT []
CMD ["pageserver", "--help"]
