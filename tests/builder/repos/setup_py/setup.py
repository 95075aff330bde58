from setuptools import setup

setup(name="kiln-setup-py-probe", version="0.1", packages=["mypkg"])
