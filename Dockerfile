# The bot as a container: one replica. compose.yaml runs two behind a TLS proxy.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY bot/__init__.py bot/__init__.py
COPY handlers/__init__.py handlers/__init__.py
COPY storage/__init__.py storage/__init__.py
RUN pip install .

# The code runs from /app (bot/ui/i18n.py finds locales/ next to the packages).
COPY bot bot
COPY handlers handlers
COPY storage storage
COPY locales locales
# Translations are compiled here, never committed (as `make locales` does).
RUN for po in locales/*/LC_MESSAGES/messages.po; do \
        pybabel -q compile -i "$po" -o "${po%.po}.mo" || exit 1; \
    done

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin bot \
    && mkdir -p /app/data && chown bot /app/data
USER bot

# The bot's own HTTP server: /telegram (webhook), /healthz, /readyz, /metrics.
ENV HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# SIGTERM stops it cleanly (exit 0); settings come from the environment.
CMD ["python", "-m", "bot"]
