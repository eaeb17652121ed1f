"""Install the fast `podnet-cni` executable into a CNI plugin directory.

The file is a three-line script whose shebang runs this interpreter with `-IS`
(isolated, no site import: about 10 ms to start instead of 50 ms), adds podnet's own
location and the site-packages directories to sys.path explicitly, and calls the
stdlib-only shim. The site-packages paths are used only by the in-process fallback.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig

import podnet

TEMPLATE = """#!{python} -IS
import sys
sys.path.extend({paths!r})
from podnet.api.cni_shim import main
main()
"""


def shim_source() -> str:
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(podnet.__file__)))
    paths = [pkg_parent]
    for p in [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
              *site.getsitepackages()]:
        if p not in paths and os.path.isdir(p):
            paths.append(p)
    return TEMPLATE.format(python=sys.executable, paths=paths)


def install_cni(directory: str, name: str = "podnet-cni") -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(shim_source())
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path
