"""avcl: audio representations learned from video (JAX/Flax)."""
import setuptools

setuptools.setup(
    name="avcl",
    version="0.1.0",
    description="Contrastive audio-visual self-supervised learning of general audio representations.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["avcl", "avcl.*", "data_pipeline", "data_pipeline.*",
                                               "configs", "configs.*", "launch", "launch.*"]),
    # The embedded world's language table (data_pipeline/world/synth/speech.py reads it).
    package_data={"data_pipeline.world.synth": ["languages.json"]},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml-collections>=1.0,<2",
        "tensorflow-cpu>=2.20,<2.22",
        "tensorflow-datasets>=4.9.8,<5",
        "librosa>=0.10,<0.12",
        "numpy>=1.26",
        # Video decoding for ingest; the wheels bundle FFmpeg (x264, AAC), so no system package is needed.
        "av>=14,<19",
        # High-quality audio resampling in ingest (also a librosa dependency) and the record protobufs.
        "soxr>=0.3",
        "protobuf>=3.20",
        # The embedded world: eSpeak NG's library and voices, and the TimGM6mb.sf2 General MIDI soundfont.
        # tinysoundfont renders the soundfont but must be installed with --no-deps (see scripts/setup.sh).
        "espeakng-loader>=0.2,<0.3",
        "pretty-midi>=0.2.10,<0.3",
        # Filters, resampling and reverberation of the embedded world (also a librosa dependency).
        "scipy>=1.10",
        # >=10.1: ImageFont.load_default(size=...) draws the written words of the embedded world.
        "pillow>=10.1",
        "tqdm>=4.60",
        "matplotlib>=3.8",
        "tensorboard>=2.20,<2.22",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3", "scikit-learn>=1.4", "ruff>=0.5"],
        # Beam's TFRecord framing needs a CRC32C implementation; google-crc32c is the fast C one.
        "beam": ["apache-beam>=2.60", "google-crc32c>=1.5"],
    },
)
