"""What setup.cfg promises to an installer: the versions the code is tested with, each once."""

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from setuptools.config.setupcfg import read_configuration


def requirements() -> list[Requirement]:
    options = read_configuration(Path(__file__).parents[1] / "setup.cfg")["options"]
    return [Requirement(line) for line in options["install_requires"]]


def test_each_dependency_is_named_once():
    names = [requirement.name.lower() for requirement in requirements()]
    assert sorted(names) == sorted(set(names))


def test_gunicorn_is_held_to_the_major_version_whose_gthread_internals_the_proxy_uses():
    """ProxyWorker and websocket.take_over work with gunicorn 27's gthread worker; 23–26 lack
    what they use (control_socket_disable, the request drain take_over answers), and 28 may
    change it."""
    gunicorn = next(r for r in requirements() if r.name == "gunicorn").specifier
    assert metadata.version("gunicorn") in gunicorn  # what this suite runs on
    assert [v for v in ("23.0", "25.3", "26.0", "27.0", "27.9", "28.0") if v in gunicorn] == ["27.0", "27.9"]
