"""Stage download: fetch Tiny Shakespeare (or take it from GPTMINI_DATA_MIRROR), verify sha256."""

from gptmini import paths
from gptmini.config import Params
from gptmini.download import download
from gptmini.stage import run


def main(params: Params) -> None:
    origin = download(params.data.url, params.data.sha256, paths.CORPUS)
    print(f"{paths.CORPUS}: sha256 {params.data.sha256} verified, from {origin}")


if __name__ == "__main__":
    run(main)
