from tasksynth.config import load_config
from tasksynth.docker.base_images import supported_pythons


def test_without_a_registry_only_debian_suites_pythons(home):
    config = load_config(environ={"TASKSYNTH_HOME": str(home), "TASKSYNTH_DOCKER__IMAGE_SOURCE": "debootstrap"})
    assert supported_pythons(config) == ["3.9", "3.11", "3.13"]


def test_with_a_registry_every_official_image(home):
    config = load_config(environ={"TASKSYNTH_HOME": str(home), "TASKSYNTH_DOCKER__IMAGE_SOURCE": "registry"})
    assert "3.10" in supported_pythons(config) and "3.12" in supported_pythons(config)
