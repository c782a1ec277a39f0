"""``python -m tfllm.export``: see :mod:`tfllm.export`."""
from tfllm.export import main

if __name__ == "__main__":
    main()
