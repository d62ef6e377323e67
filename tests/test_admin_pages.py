"""Organisation pages (units, points, users, CSV import) against the real server."""

# ruff: noqa: F811 - the fixtures imported from test_webauth are parameters here

from __future__ import annotations

import html as html_module

import aiohttp
from sqlalchemy import func, select

from conference.domain import accounts, organisation
from conference.domain.models import Point, Unit

from .test_webauth import Browser, Site, any_site, browsers, field_error, site  # noqa: F401


def two_districts(site: Site) -> None:
    """Districts A and B with a commune and a point each; an admin and a secretary of A."""
    site.add_unit("huyen-a", "Huyện A")
    site.add_unit("xa-a1", "Xã A Một", "commune", "huyen-a")
    site.add_unit("huyen-b", "Huyện B")
    site.add_unit("xa-b1", "Xã B Một", "commune", "huyen-b")
    for code, name, unit in (
        ("p-a1", "UBND xã A Một", "xa-a1"),
        ("p-b1", "UBND xã B Một", "xa-b1"),
    ):
        site.db(
            lambda s, c=code, n=name, u=unit: organisation.create_point(s, code=c, name=n, unit=u)
        )
    site.add_user("qt-a", "admin", unit="huyen-a", display_name="Quản trị huyện A")
    site.add_user("thuky-a", "secretary", unit="huyen-a")
    site.add_user("thuky-b", "secretary", unit="huyen-b")


async def open_browser(site: Site, browsers: list[Browser], username: str | None) -> Browser:
    browser = site.browser()
    browsers.append(browser)
    if username == "admin":
        await browser.signed_in("admin", site.admin_password)
    elif username:
        await browser.signed_in(username)
    return browser


async def test_roles_and_scope(any_site: Site, browsers: list[Browser]) -> None:
    site = any_site
    two_districts(site)
    anonymous = await open_browser(site, browsers, None)
    status, _, response = await anonymous.get("/admin/points")
    assert status == 303 and response.headers["Location"] == "/login?next=/admin/points"

    secretary = await open_browser(site, browsers, "thuky-a")
    for path in (
        "/admin/units",
        "/admin/points",
        "/admin/points/p-a1",
        "/admin/users",
        "/admin/import",
    ):
        status, html, _ = await secretary.get(path)
        assert status == 403 and "Tài khoản của bạn không có quyền mở trang này." in html, path
    token = await secretary.csrf("/home")
    status, _, _ = await secretary.post(
        "/admin/units",
        {
            "csrf_token": token,
            "code": "xa-moi",
            "name": "Xã Mới",
            "kind": "commune",
            "parent": "huyen-a",
        },
    )
    assert status == 403
    status, html, _ = await secretary.get("/home")
    assert "/admin/units" not in html  # no links to pages it may not open

    admin_a = await open_browser(site, browsers, "qt-a")
    status, html, _ = await admin_a.get("/home")
    assert status == 200 and 'href="/admin/units"' in html and 'href="/admin/import"' in html
    status, html, _ = await admin_a.get("/admin/units")
    assert status == 200 and 'data-code="huyen-a"' in html and 'data-code="xa-a1"' in html
    assert "huyen-b" not in html and "xa-b1" not in html
    status, html, _ = await admin_a.get("/admin/points")
    assert 'data-code="p-a1"' in html and "p-b1" not in html
    status, html, _ = await admin_a.get("/admin/points/p-b1")
    assert status == 404
    token = await admin_a.csrf("/admin/points/p-a1")
    form = {"csrf_token": token, "name": "Chiếm", "unit": "xa-a1", "bandwidth": "low"}
    status, _, _ = await admin_a.post("/admin/points/p-b1", form)
    assert status == 404
    assert site.db(lambda s: organisation.get_point(s, "p-b1").name) == "UBND xã B Một"
    # moving its own point into district B is refused as an unknown unit
    status, html, _ = await admin_a.post("/admin/points/p-a1", {**form, "unit": "xa-b1"})
    assert status == 400
    assert field_error(html, "unit") == "Không có đơn vị này trong phạm vi của bạn."
    status, html, _ = await admin_a.get("/admin/users")
    assert 'data-username="thuky-a"' in html and 'data-username="qt-a"' in html
    assert "thuky-b" not in html and 'data-username="admin"' not in html
    status, _, _ = await admin_a.get("/admin/users/thuky-b")
    assert status == 404
    status, _, _ = await admin_a.get("/admin/users/admin")
    assert status == 404

    # the installation's admin sees both districts
    admin = await open_browser(site, browsers, "admin")
    status, html, _ = await admin.get("/admin/units")
    assert 'data-code="huyen-a"' in html and 'data-code="xa-b1"' in html


async def test_units_and_points_forms(site: Site, browsers: list[Browser]) -> None:
    two_districts(site)
    admin_a = await open_browser(site, browsers, "qt-a")
    token = await admin_a.csrf("/admin/units")

    async def add_unit(**form: str) -> tuple[int, str]:
        status, html, _ = await admin_a.post("/admin/units", {"csrf_token": token, **form})
        return status, html

    status, html = await add_unit(code="xa a2!", name="  ", kind="commune", parent="")
    assert status == 400
    assert field_error(html, "code").startswith("Mã chỉ gồm chữ cái")  # type: ignore[union-attr]
    assert field_error(html, "name") == "Vui lòng nhập tên (tối đa 200 ký tự)."
    assert field_error(html, "parent") == "Chọn đơn vị cấp trên trong phạm vi của bạn."
    status, html = await add_unit(code="xa-a2", name="Xã A Hai", kind="district", parent="huyen-a")
    assert field_error(html, "parent") == "Đơn vị cấp trên phải ở cấp cao hơn (tỉnh > huyện > xã)."
    status, html = await add_unit(code="xa-b1", name="Trùng", kind="commune", parent="huyen-a")
    assert status == 400 and field_error(html, "code") == "Mã xa-b1 đã được dùng."
    status, html = await add_unit(code="xa-a2", name="Xã A Hai", kind="commune", parent="huyen-b")
    assert field_error(html, "parent") == "Không có đơn vị này trong phạm vi của bạn."
    status, _ = await add_unit(code="xa-a2", name="Xã A Hai", kind="commune", parent="huyen-a")
    assert status == 303
    status, html, _ = await admin_a.get("/admin/units?created=xa-a2")
    assert 'data-code="xa-a2"' in html
    assert site.db(lambda s: organisation.get_unit(s, "xa-a2").parent.code) == "huyen-a"  # type: ignore[union-attr]

    # points: field messages, then a point whose name looks like HTML (escaped on the page)
    token = await admin_a.csrf("/admin/points/new")
    bad = {
        "csrf_token": token,
        "code": "diem-1",
        "name": "Điểm 1",
        "unit": "xa-a2",
        "email": "khong-phai-email",
        "phone": "abc",
        "bandwidth": "sieu",
    }
    status, html, _ = await admin_a.post("/admin/points/new", bad)
    assert status == 400
    assert field_error(html, "email") == "Địa chỉ thư điện tử không hợp lệ."
    assert field_error(html, "phone") == "Số điện thoại không hợp lệ."
    assert field_error(html, "bandwidth") == "Chọn loại đường truyền: yếu, thường hoặc tốt."
    assert 'value="khong-phai-email"' in html  # the form keeps what was typed
    name = "<script>alert('x')</script> & UBND"
    good = {
        **bad,
        "name": name,
        "email": "vp@xa-a2.gov.vn",
        "phone": "0214 3880 123",
        "bandwidth": "low",
        "active": "on",
    }
    status, _, response = await admin_a.post("/admin/points/new", good)
    assert status == 303 and response.headers["Location"] == "/admin/points?saved=diem-1"
    status, html, _ = await admin_a.get("/admin/points")
    assert (
        "<script>alert" not in html
        and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; UBND" in html
    )
    assert site.db(lambda s: organisation.get_point(s, "diem-1").name) == name  # stored as text

    # edit
    token = await admin_a.csrf("/admin/points/diem-1")
    edit = {
        "csrf_token": token,
        "name": "UBND xã A Hai",
        "unit": "xa-a2",
        "email": "",
        "phone": "",
        "bandwidth": "high",
    }
    status, _, _ = await admin_a.post("/admin/points/diem-1", edit)
    assert status == 303

    def check(session: object) -> None:
        point = organisation.get_point(session, "diem-1")  # type: ignore[arg-type]
        assert (point.name, point.bandwidth_profile, point.active) == (
            "UBND xã A Hai",
            "high",
            False,
        )
        assert point.contact_email is None and point.phone is None

    site.db(check)
    # English on request
    status, html, _ = await admin_a.post("/admin/points/diem-1?lang=en", {**edit, "name": ""})
    assert field_error(html, "name") == "Enter a name (at most 200 characters)."


async def test_users_admin(site: Site, browsers: list[Browser]) -> None:
    two_districts(site)
    admin_a = await open_browser(site, browsers, "qt-a")
    token = await admin_a.csrf("/admin/users/new")
    bad = {
        "csrf_token": token,
        "username": "Ông Ba",
        "display_name": "Ông Ba",
        "role": "operator",
        "unit": "",
        "point": "",
        "password": "ngan",
        "repeat": "ngan",
    }
    status, html, _ = await admin_a.post("/admin/users/new", bad)
    assert status == 400
    assert field_error(html, "username").startswith("Tên đăng nhập gồm")  # type: ignore[union-attr]
    assert field_error(html, "point") == "Tài khoản vận hành điểm cầu cần chọn điểm cầu."
    assert field_error(html, "password") == "Mật khẩu phải có ít nhất 8 ký tự."
    assert 'name="password" type="password" value=""' in html  # passwords are not sent back
    status, html, _ = await admin_a.post(
        "/admin/users/new",
        {
            **bad,
            "username": "ubnd-b1",
            "point": "p-b1",
            "password": "mat-khau-1",
            "repeat": "mat-khau-2",
        },
    )
    assert field_error(html, "point") == "Không có điểm cầu này trong phạm vi của bạn."
    assert field_error(html, "repeat") == "Hai lần nhập mật khẩu không khớp nhau."
    status, html, _ = await admin_a.post(
        "/admin/users/new",
        {
            **bad,
            "username": "thuky-b",
            "role": "chair",
            "unit": "huyen-a",
            "password": "mat-khau-1",
            "repeat": "mat-khau-1",
        },
    )
    assert status == 400 and field_error(html, "username") == "Tên đăng nhập thuky-b đã có."
    status, _, _ = await admin_a.post(
        "/admin/users/new",
        {
            **bad,
            "username": "ubnd-a1",
            "display_name": "UBND xã A Một",
            "point": "p-a1",
            "password": "mat-khau-1",
            "repeat": "mat-khau-1",
        },
    )
    assert status == 303
    user = site.user("ubnd-a1")
    assert (user.role, user.unit_id is not None) == ("operator", True)

    operator = await open_browser(site, browsers, "ubnd-a1")
    status, html, _ = await operator.get("/home")
    assert "UBND xã A Một" in html and "p-a1" in html

    # reset the password: the old one and the old session stop working
    token = await admin_a.csrf("/admin/users/ubnd-a1")
    status, html, _ = await admin_a.post(
        "/admin/users/ubnd-a1",
        {"csrf_token": token, "action": "password", "password": "x", "repeat": "x"},
    )
    assert status == 400 and field_error(html, "password") == "Mật khẩu phải có ít nhất 8 ký tự."
    status, _, _ = await admin_a.post(
        "/admin/users/ubnd-a1",
        {
            "csrf_token": token,
            "action": "password",
            "password": "mat-khau-moi",
            "repeat": "mat-khau-moi",
        },
    )
    assert status == 303
    status, _, _ = await operator.get("/home")
    assert status == 303
    status, _, _ = await operator.login("ubnd-a1", "mat-khau-1")
    assert status == 401
    await operator.signed_in("ubnd-a1", "mat-khau-moi")

    # disable: the session ends, no new sign-in; an admin cannot disable itself
    status, _, _ = await admin_a.post(
        "/admin/users/ubnd-a1", {"csrf_token": token, "action": "active"}
    )
    assert status == 303
    assert site.user("ubnd-a1").active is False
    status, _, _ = await operator.get("/home")
    assert status == 303
    status, _, _ = await operator.login("ubnd-a1", "mat-khau-moi")
    assert status == 401
    status, html, _ = await admin_a.post(
        "/admin/users/qt-a", {"csrf_token": token, "action": "active"}
    )
    assert (
        status == 400
        and field_error(html, "active") == "Không thể tự khóa tài khoản của chính mình."
    )
    status, _, _ = await admin_a.post(
        "/admin/users/ubnd-a1", {"csrf_token": token, "action": "active", "active": "on"}
    )
    assert site.user("ubnd-a1").active is True


async def test_csv_import(site: Site, browsers: list[Browser]) -> None:
    two_districts(site)
    admin_a = await open_browser(site, browsers, "qt-a")

    def counts() -> tuple[int, int]:
        return site.db(
            lambda s: (
                s.scalar(select(func.count()).select_from(Unit)) or 0,
                s.scalar(select(func.count()).select_from(Point)) or 0,
            )
        )

    async def upload(text: str, name: str = "donvi.csv") -> tuple[int, str]:
        token = await admin_a.csrf("/admin/import")
        form = aiohttp.FormData()
        form.add_field("csrf_token", token)
        form.add_field("file", text.encode("utf-8"), filename=name, content_type="text/csv")
        status, html, _ = await admin_a.post("/admin/import", form)
        return status, html

    before = counts()
    broken = (
        "kind,code,name,parent,email,phone,bandwidth\n"
        "commune,xa-a3,Xã A Ba,huyen-a,,,\n"
        "point,ubnd-a3,UBND xã A Ba,xa-a3,khong-hop-le,,\n"
    )
    status, html = await upload(broken)
    assert status == 400 and "không có dòng nào được ghi" in html
    # said in Vietnamese (issue 15 item 4: the page said "e-mail address ... is invalid")
    shown = html_module.unescape(html)
    assert 'data-field="file">Dòng 3: Địa chỉ thư điện tử "khong-hop-le" không hợp lệ' in shown
    assert counts() == before
    # a district admin cannot import outside its district
    status, html = await upload("kind,code,name,parent\ndistrict,huyen-c,Huyện C,\n")
    assert status == 400 and "Dòng 2: " in html and "nằm ngoài đơn vị của bạn" in html
    status, html = await upload("kind,code,name,parent\ncommune,xa-x,Xã X,huyen-b\n")
    assert status == 400 and "Dòng 2: " in html
    assert counts() == before
    # every problem of a file is said in the page's language, none in English
    for text, said in (
        (b"kind,code,name,parent\n\xff\xfe,x,y,\n", "không phải văn bản UTF-8"),
        (b"kind,code,name\n", 'Thiếu cột "parent"'),
        (
            "kind,code,name,parent\ncommune,xa-y,Xã Y,khong-co\n".encode(),
            "Không có đơn vị cấp trên",
        ),
        ("kind,code,name,parent\nthon,xa-y,Xã Y,huyen-a\n".encode(), "không hợp lệ"),
    ):
        token = await admin_a.csrf("/admin/import")
        form = aiohttp.FormData()
        form.add_field("csrf_token", token)
        form.add_field("file", text, filename="x.csv", content_type="text/csv")
        status, html, _ = await admin_a.post("/admin/import", form)
        shown = html_module.unescape(html)
        assert status == 400 and said in shown, (text, shown[-1500:])
    # no file
    token = await admin_a.csrf("/admin/import")
    form = aiohttp.FormData()
    form.add_field("csrf_token", token)
    form.add_field("file", b"", filename="trong.csv", content_type="text/csv")
    status, html, _ = await admin_a.post("/admin/import", form)
    assert status == 400 and field_error(html, "file") == "Chọn một tệp CSV."
    # without the CSRF token: refused, nothing written
    form = aiohttp.FormData()
    form.add_field("file", broken.replace("khong-hop-le", "").encode(), filename="a.csv")
    status, _, _ = await admin_a.post("/admin/import", form)
    assert status == 403 and counts() == before

    status, html = await upload(broken.replace("khong-hop-le", "vp@xa-a3.gov.vn"))
    assert status == 200 and "Đã nhập 1 đơn vị và 1 điểm cầu." in html
    assert counts() == (before[0] + 1, before[1] + 1)
    assert site.db(
        lambda s: accounts.can_see(accounts.get_user(s, "qt-a"), organisation.get_unit(s, "xa-a3"))
    )
