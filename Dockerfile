# The kubevisor image for users with a container engine (docker/podman build .).
# One image runs all three components: kubevisor-controller, kubevisor-agent and
# kubevisor-gateway (the chart sets the command). Same content as hack/build-image.sh,
# which builds it without an engine (mmdebstrap) and is what the tests run.
#
#   docker build -t kubevisor.local/kubevisor:dev .
#
# Not built on the development machines (no container engine there): see
# charts/kubevisor/README.md, "What was run".

# noVNC for the display gateway, the version hack/setup pins
FROM node:20-bookworm-slim AS novnc
ARG NOVNC_VERSION=1.7.0
WORKDIR /novnc
RUN npm pack --silent "@novnc/novnc@${NOVNC_VERSION}" \
 && mkdir out && tar xzf novnc-novnc-*.tgz -C out --strip-components=1 \
 && echo "${NOVNC_VERSION}" > out/.version

FROM debian:bookworm-slim
# python3-libvirt from Debian (nothing to compile); qemu-img for the agent's disks; BIRD 2
# and FRR for the VRFs' routing daemons (frr-reload is in frr-pythontools)
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-libvirt qemu-utils iproute2 ca-certificates \
      bird2 frr frr-pythontools \
 && rm -rf /var/lib/apt/lists/*
# the chart runs controller and gateway as 65532; kopf asks getpwuid() for a user name
RUN groupadd --system --gid 65532 kubevisor \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kubevisor
COPY pyproject.toml README.md /src/
COPY operator /src/operator
RUN python3 -m venv --system-site-packages /opt/kubevisor \
 && /opt/kubevisor/bin/pip install --no-cache-dir --no-compile /src \
 && rm -rf /src
COPY --from=novnc /novnc/out /usr/share/kubevisor/novnc
ENV PATH=/opt/kubevisor/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1
