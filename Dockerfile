# trainboard: one image for the app (`trainboard serve`) and the GPU worker (`trainboard worker`).
# The base is the official PyTorch CUDA runtime image; torch and torchvision come from it, so
# installing trainboard downloads no second torch.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/trainboard \
    TRAINBOARD_DATABASE_URL=sqlite:////var/lib/trainboard/db/trainboard.db \
    TRAINBOARD_DATA_DIR=/var/lib/trainboard/data \
    TRAINBOARD_ARTIFACTS_DIR=/var/lib/trainboard/artifacts \
    TRAINBOARD_WORK_DIR=/var/lib/trainboard/work \
    WANDB_DIR=/var/lib/trainboard/wandb \
    WANDB_CACHE_DIR=/var/lib/trainboard/wandb/cache \
    WANDB_CONFIG_DIR=/var/lib/trainboard/wandb/config

RUN groupadd --system --gid 10001 trainboard \
 && useradd --system --uid 10001 --gid trainboard --create-home --home-dir /home/trainboard trainboard \
 && mkdir -p /var/lib/trainboard/db /var/lib/trainboard/data /var/lib/trainboard/artifacts /var/lib/trainboard/work /var/lib/trainboard/wandb \
 && chown -R trainboard:trainboard /var/lib/trainboard

WORKDIR /opt/trainboard

# Dependencies first: this layer is reused until pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then the code, without touching the dependencies again.
COPY README.md ./
COPY app ./app
COPY worker ./worker
COPY templates ./templates
RUN pip install --no-deps . && rm -rf build *.egg-info

USER trainboard
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["trainboard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
