# vwo-otel gateway: the OTLP/HTTP gateway that batches the VWO events of many processes.
#
#   docker build -t vwo-otel-gateway .
#   docker run -v vwo-spool:/var/lib/vwo-gateway -v $PWD/gateway.json:/etc/vwo-gateway/gateway.json:ro \
#       -e VWO_SDK_KEY_123456=... -e VWO_GATEWAY_TOKEN=... -p 4318:4318 vwo-otel-gateway
#
# Runs as an unprivileged user (uid 10001); the spool (--spool: events on disk before each 200)
# is the volume /var/lib/vwo-gateway. The entrypoint is `vwo-otel`, so the same image also runs
# `vwo-otel receive` (a stand-in VWO for trials). deploy/compose.yaml and deploy/kubernetes/ use
# it; docs/gateway.md explains the settings. EXTRA_PACKAGES adds pip packages to the image (the
# compose file's demo app and collector: opentelemetry-exporter-otlp-proto-http, rotel).
FROM python:3.12-slim

ARG EXTRA_PACKAGES=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/vwo-otel
COPY pyproject.toml README.md LICENSE ./
COPY vwo_otel ./vwo_otel
COPY examples ./examples
RUN pip install ".[gateway]" ${EXTRA_PACKAGES} \
    && if python -c "import rotel" 2>/dev/null; then \
         ln -s "$(python -c 'import pathlib, rotel; print(pathlib.Path(rotel.__file__).with_name("rotel-agent"))')" \
               /usr/local/bin/rotel-agent; \
       fi \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/vwo-gateway --create-home vwo \
    && mkdir -p /var/lib/vwo-gateway/spool /etc/vwo-gateway \
    && chown -R 10001:10001 /var/lib/vwo-gateway

USER 10001:10001
VOLUME /var/lib/vwo-gateway
EXPOSE 4318
# liveness only (/readyz says whether it takes requests now: a probe for load balancers)
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4318/healthz', timeout=2)"
ENTRYPOINT ["vwo-otel"]
# Serving other hosts needs a token: VWO_GATEWAY_TOKEN (senders: Authorization: Bearer <token>).
CMD ["gateway", "--config", "/etc/vwo-gateway/gateway.json", "--spool", "/var/lib/vwo-gateway/spool", \
     "--host", "0.0.0.0", "--auth-token-env", "VWO_GATEWAY_TOKEN"]
