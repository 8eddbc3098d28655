"""Readers: PyAV video, NTU .skeleton, .npy, caption/QA/label files, each with its bad-input cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oskar_ray.data.readers.annotations import read_captions, read_label_map, read_labels, read_qa
from oskar_ray.data.readers.common import ReadError, uniform_indices
from oskar_ray.data.readers.skeleton import read_missing_list, read_npy_skeleton, read_ntu_skeleton
from oskar_ray.data.readers.video import read_video, write_video


def _clip(frames=20, height=48, width=64):
    clip = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        clip[t, :, : width // 2] = (200, 30, 30)  # left half red, right half blue
        clip[t, :, width // 2:] = (30, 30, 200)
        clip[t, :4, :4] = t * 10
    return clip


@pytest.mark.parametrize(("name", "codec"), [("clip.mp4", "h264"), ("clip.avi", "mpeg4")])
def test_video_roundtrip_resizes_and_crops(tmp_path, name, codec):
    path = write_video(tmp_path / name, _clip(), fps=10, codec=codec)
    clip, info = read_video(path, frames=8, height=16, width=16)
    assert clip.shape == (8, 16, 16, 3) and clip.dtype == np.uint8
    assert info["source_frames"] == 20 and info["source_size"] == [64, 48]
    # aspect kept: 64x48 → 21x16 then centre crop 16 wide; left stays red, right blue
    assert clip[:, :, 2, 0].mean() > 150 and clip[:, :, 13, 2].mean() > 150


def test_uniform_indices():
    assert uniform_indices(300, 4).tolist() == [37, 112, 187, 262]
    assert uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50])
def test_bad_video_names_the_file(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(ReadError, match="broken.mp4: undecodable"):
        read_video(path)


def test_ntu_keeps_most_active_body_and_counts(tmp_path, ntu_writer, pose):
    frames = []
    for t in range(12):
        bodies = [("111", pose(0.0)), ("222", pose(0.8, t, swing=1.2))]  # 222 waves, 111 stands
        frames.append([] if t == 5 else bodies)  # a frame with no body
    path = ntu_writer(tmp_path / "S001C001P001R001A001.skeleton", frames)
    seq, info = read_ntu_skeleton(path, frames=8)
    assert seq.shape == (8, 25, 3) and seq.dtype == np.float32
    assert info == {"bodies": 2, "kept_body": "222", "source_frames": 12, "empty_frames": 1}
    assert abs(seq[:, 0].mean(axis=0)).max() < 1e-5  # centred on the spine base


def test_ntu_bad_inputs(tmp_path, ntu_writer, pose):
    good = [[("1", pose())]] * 4
    truncated = ntu_writer(tmp_path / "trunc.skeleton", good, truncate_lines=7)
    with pytest.raises(ReadError, match=r"trunc.skeleton: truncated: .*joint 18 of frame 3"):
        read_ntu_skeleton(truncated)
    bad_pose = pose()
    bad_pose[4, 1] = np.nan
    nan = ntu_writer(tmp_path / "nan.skeleton", [[("1", pose())], [("1", bad_pose)]])
    with pytest.raises(ReadError, match=r"nan.skeleton: line \d+: NaN/inf joint coordinates \(frame 1, joint 4\)"):
        read_ntu_skeleton(nan)
    empty = ntu_writer(tmp_path / "nobody.skeleton", [[], []])
    with pytest.raises(ReadError, match="no body in any of the 2 frames"):
        read_ntu_skeleton(empty)
    (tmp_path / "text.skeleton").write_text("abc\n")
    with pytest.raises(ReadError, match="frameCount must be an integer"):
        read_ntu_skeleton(tmp_path / "text.skeleton")


def test_real_ntu_sample(shared_data):
    folder = shared_data / "skeleton" / "ntu_rgbd"
    seq, info = read_ntu_skeleton(folder / "S001C001P001R001A001.skeleton", frames=16)
    assert seq.shape == (16, 25, 3) and info["source_frames"] == 103 and info["bodies"] == 1
    missing = read_missing_list(folder / "NTU_RGBD_samples_with_missing_skeletons.txt")
    assert "S001C002P005R002A008" in missing and len(missing) == 302


def test_npy(tmp_path, pose):
    good = np.stack([pose(0.0, t, 1.0) for t in range(10)])
    np.save(tmp_path / "a.npy", good)
    seq, info = read_npy_skeleton(tmp_path / "a.npy", frames=4)
    assert seq.shape == (4, 25, 3) and info["source_frames"] == 10
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReadError, match="obj.npy: not a plain numeric .npy"):
        read_npy_skeleton(tmp_path / "obj.npy")
    np.save(tmp_path / "shape.npy", np.zeros((5, 17, 3)))
    with pytest.raises(ReadError, match=r"shape.npy: array shape \(5, 17, 3\)"):
        read_npy_skeleton(tmp_path / "shape.npy")
    good[3, 2, 0] = np.inf
    np.save(tmp_path / "inf.npy", good)
    with pytest.raises(ReadError, match="inf.npy: NaN/inf joint coordinates \\(first in frame 3\\)"):
        read_npy_skeleton(tmp_path / "inf.npy")


def test_captions_mmaction2_and_msrvtt(tmp_path):
    mm = tmp_path / "mm.json"
    mm.write_text(json.dumps({"vid1.mp4": ["a man runs", " "], "vid2.mp4": ["a dog"]}))
    caps, problems = read_captions(mm)
    assert caps == {"vid1": ["a man runs"], "vid2": ["a dog"]}
    assert problems == [("mm.json:vid1.mp4", "empty caption (' ')")]
    vtt = tmp_path / "videodatainfo.json"
    vtt.write_text(json.dumps({"videos": [{"video_id": "video0"}], "sentences": [
        {"video_id": "video0", "caption": "cooking pasta", "sen_id": 0},
        {"video_id": "video0", "caption": "", "sen_id": 1}]}))
    caps, problems = read_captions(vtt)
    assert caps == {"video0": ["cooking pasta"]} and len(problems) == 1
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ReadError, match="bad.json: not valid JSON"):
        read_captions(tmp_path / "bad.json")


def test_qa_formats(tmp_path):
    msvd = tmp_path / "msvd.json"
    msvd.write_text(json.dumps([{"answer": "man", "id": 1, "question": "who runs?", "video_id": 12},
                                {"answer": "", "id": 2, "question": "what?", "video_id": 12},
                                {"id": 3, "question": "missing answer", "video_id": 3}]))
    items, problems = read_qa(msvd)
    assert [(q.stem, q.answer, q.qtype) for q in items] == [("vid12", "man", "who")] and len(problems) == 2
    tgif = tmp_path / "Test_action_question.csv"
    tgif.write_bytes(b"gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\r\n"
                     b"tumblr_x\twhat does he do ?\tjump\trun\tsit\tnod\tclap\t1\tACTION1\t7\r\n"
                     b"tumblr_y\twhat ?\ta\tb\tc\td\te\t9\tACTION2\t8\r\n")
    items, problems = read_qa(tgif)
    assert (items[0].stem, items[0].answer, items[0].qtype, len(items[0].choices)) == ("tumblr_x", "run", "action", 5)
    assert items[0].question == "what does he do ?" and len(problems) == 1  # answer index 9 out of range
    nextqa = tmp_path / "val.csv"
    nextqa.write_text("video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
                      "4010069381,369,640,480,how do they play,2,6,CH,a,b,strum,d,e\n")
    items, problems = read_qa(nextqa)
    assert (items[0].stem, items[0].answer, items[0].qtype, problems) == ("4010069381", "strum", "nextqa_CH", [])
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(ReadError, match="x.txt: unknown QA format"):
        read_qa(tmp_path / "x.txt")


def test_real_qa_excerpts(shared_data):
    ann = shared_data / "annotations"
    for path, qtype in [(ann / "tgif_qa" / "Test_count_question_first200.csv", "count"),
                        (ann / "tgif_qa" / "Test_frameqa_question_first200.csv", "frameqa_object"),
                        (ann / "nextqa" / "val_first200.csv", "nextqa_CH"),
                        (ann / "msvd_qa" / "val_qa_first200.json", "who")]:
        items, problems = read_qa(path)
        assert len(items) == 200 and problems == [] and items[0].qtype == qtype
        assert all("\r" not in q.question + q.answer for q in items)


def test_labels(tmp_path, shared_data):
    names = read_label_map(shared_data / "labels" / "label_map_ntu60.txt")
    assert len(names) == 60 and names[0] == "drink water"
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 0\nb.mp4 59\nc.mp4 60\nd.mp4\n\n")
    labels, problems = read_labels(listing, names)
    assert labels == {"a": 0, "b": 59} and [p[0] for p in problems] == ["list.txt:3", "list.txt:4"]
    (tmp_path / "map.txt").write_text("a\n\nb\n")
    with pytest.raises(ReadError, match="one non-empty class name per line"):
        read_label_map(tmp_path / "map.txt")
