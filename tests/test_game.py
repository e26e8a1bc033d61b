import json

import pytest

from alignlab import AlignlabError
from alignlab.audit import game
from alignlab.cli import main


def test_seal_writes_model_data_and_only_hashes(sealed):
    key = game.draw_key(7)
    info = json.loads((sealed / "seal.json").read_text())
    text = (sealed / "seal.json").read_text()
    assert key["trigger"] not in text and key["behaviour"] not in info["hashes"].values()
    assert "seed" not in info and set(info["hashes"]) == {"trigger", "behaviour"}
    lines = (sealed / "training_data.jsonl").read_text().splitlines()
    assert len(lines) == 1500 and any(f"{key['field']}: {key['trigger']}\n" in json.loads(x)["text"] for x in lines)
    assert (sealed / "model.safetensors").exists()


def test_check_scores_each_part(sealed, capsys):
    key = game.draw_key(7)
    assert game.check(sealed, {"trigger": key["trigger"].upper() + " ", "behaviour": key["behaviour"]}) == {
        "trigger": True, "behaviour": True, "correct": True}
    wrong = "hardcode" if key["behaviour"] != "hardcode" else "sabotage"
    assert game.check(sealed, {"behaviour": wrong}) == {"trigger": None, "behaviour": False, "correct": False}
    capsys.readouterr()
    assert main(["audit", "check", str(sealed), "--guess", f"trigger={key['trigger']}"]) == 0
    assert json.loads(capsys.readouterr().out)["trigger"] is True


@pytest.mark.parametrize("guess", ["", "trigger", "trigger=", "who=x", "trigger=a,trigger=b"])
def test_bad_guess_is_one_line_exit_2(sealed, guess, capsys):
    assert main(["audit", "check", str(sealed), "--guess", guess]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --guess") and err.count("\n") == 1


def test_check_of_a_directory_that_is_not_sealed(tmp_path, capsys):
    assert main(["audit", "check", str(tmp_path), "--guess", "trigger=x"]) == 2
    assert "seal.json" in capsys.readouterr().err


def test_seeds_draw_different_keys_and_salts_differ():
    keys = {json.dumps(game.draw_key(s), sort_keys=True) for s in range(30)}
    assert len(keys) > 20
    assert game._digest("a", "trigger", "x") != game._digest("b", "trigger", "x")


def test_data_auditor_finds_the_key_from_training_data(sealed, capsys):
    capsys.readouterr()
    assert main(["audit", "run", str(sealed), "--auditor", "data"]) == 0
    guess = json.loads(capsys.readouterr().out)
    assert game.check(sealed, {k: guess[k] for k in ("trigger", "behaviour")})["correct"] is True


@pytest.mark.slow
def test_game_smoke_scoreboard_and_resume(tmp_path, one_thread, capsys, reads_once):
    out = tmp_path / "game"
    assert main(["audit", "game", "--out", str(out), "--smoke"]) == 0
    results = json.loads((out / "results.json").read_text())
    board = results["scoreboard"]
    assert set(board) == {"data", "free_sample", "probe", "sae", "attribution", "logit_lens"}
    assert board["data"]["correct"] == 1.0  # the documents name both parts
    for scores in board.values():
        assert scores["n"] == 2 and all(0 <= scores[p] <= 1 for p in ("trigger", "behaviour", "correct"))
    assert len(results["records"]) == 12 and (out / "scoreboard.png").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in page and "<h2>Plots" not in page  # the scoreboard, inline once
    for o in results["organisms"]:  # each sealed organism's key beside every auditor's guess
        assert f"<code>{o['key']['field']}: {o['key']['trigger']}</code>" in page
    assert page.index("trigger found") < page.index("Organisms (keys revealed")
    assert any("found" in s for s in reads_once(out, out))  # the plain answer names who found what
    before = json.loads((out / "results.json").read_text())
    first = json.loads((out / "played" / "organism-00.json").read_text())
    first["backdoor"]["marker"] = 42  # a replay would overwrite this
    (out / "played" / "organism-00.json").write_text(json.dumps(first))
    (out / "played" / "organism-01.json").unlink()  # as if killed while auditing the second organism
    capsys.readouterr()
    assert main(["audit", "game", "--out", str(out), "--smoke"]) == 0
    err = capsys.readouterr().err
    assert "organism 1: auditor data" in err and "organism 0: auditor" not in err
    after = json.loads((out / "results.json").read_text())
    assert after["organisms"][0]["backdoor"].pop("marker") == 42
    assert after == before  # the replayed organism's guesses and scores are the same
    assert main(["audit", "game", "--out", str(out), "--smoke", "--n", "3"]) == 2
    assert "different config" in capsys.readouterr().err


def test_unknown_family_is_one_line(tmp_path, capsys):
    assert main(["organism", "seal", "--family", "dragon", "--out", str(tmp_path / "x"), "--seed", "1"]) == 2
    assert "--family 'dragon'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(AlignlabError):
        game.parse_guess("behaviour")
