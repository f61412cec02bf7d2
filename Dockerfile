# syntax=docker/dockerfile:1
# A small static sluice image: built with CGO off, run as a non-root user on
# distroless (no shell, no package manager; CA certificates for rediss://).
#   docker build -t sluice:dev .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /out/sluice ./cmd/sluice

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
# distroless's nonroot user; the manifests run it with a read-only root
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
